// A Jinterface client: an OtpNode pings a node, talks to a registered name there, and an
// OtpSelf/OtpConnection does an rpc. Every result goes back to the registered name as a term.
import com.ericsson.otp.erlang.*;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;

public class BbClient {
    // Listen on loopback only (Jinterface's default factory listens on every interface).
    static class Loopback extends OtpSocketTransportFactory {
        @Override
        public OtpServerTransport createServerTransport(final int port) throws IOException {
            final ServerSocket server = new ServerSocket(port, 50, InetAddress.getLoopbackAddress());
            return new OtpServerTransport() {
                public int getLocalPort() { return server.getLocalPort(); }
                public OtpTransport accept() throws IOException { return new OtpSocketTransport(server.accept()); }
                public void close() throws IOException { server.close(); }
            };
        }
    }

    static OtpErlangTuple tuple(OtpErlangObject... items) { return new OtpErlangTuple(items); }
    static OtpErlangAtom atom(String text) { return new OtpErlangAtom(text); }

    public static void main(String[] args) throws Exception {
        String alive = args[0], cookie = args[1], peer = args[2], inbox = args[3];
        OtpNode node = new OtpNode(alive + "@127.0.0.1", cookie, new Loopback());
        OtpMbox mbox = node.createMbox("jclient");
        boolean pong = node.ping(peer, 10000);
        mbox.send(inbox, peer, tuple(atom("ping"), atom(pong ? "pong" : "pang")));
        mbox.send(inbox, peer, tuple(mbox.self(), atom("hello"), new OtpErlangLong(42)));
        OtpErlangObject reply = mbox.receive(10000);
        mbox.send(inbox, peer, tuple(atom("echoed"), reply == null ? atom("timeout") : reply));

        OtpSelf self = new OtpSelf(alive + "_rpc@127.0.0.1", cookie, new Loopback());
        OtpConnection connection = self.connect(new OtpPeer(peer));
        connection.sendRPC("pymod", "add", new OtpErlangObject[] {new OtpErlangLong(40), new OtpErlangLong(2)});
        OtpErlangObject sum = connection.receiveRPC();
        connection.sendRPC("pymod", "missing", new OtpErlangObject[] {});
        OtpErlangObject missing = connection.receiveRPC();
        mbox.send(inbox, peer, tuple(atom("rpc"), sum, missing));
        connection.close();
        mbox.close();
        node.close();
    }
}
