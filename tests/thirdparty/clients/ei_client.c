/* An erl_interface (ei) C node: connects to a node, talks to a registered name, does rpc.
   Every result goes back to the registered name as an Erlang term, for the test to check. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ei.h"

static int report(ei_cnode *ec, int fd, char *to, const char *tag, const char *buf, int len) {
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, tag);
    ei_x_append_buf(&x, buf, len);
    int res = ei_reg_send(ec, fd, to, x.buff, x.index);
    ei_x_free(&x);
    return res;
}

static int rpc(ei_cnode *ec, int fd, char *to, const char *tag, char *mod, char *fun) {
    ei_x_buff args, reply;
    ei_x_new(&args);
    ei_x_encode_list_header(&args, 2);
    ei_x_encode_long(&args, 40);
    ei_x_encode_long(&args, 2);
    ei_x_encode_empty_list(&args);
    ei_x_new(&reply);
    if (ei_rpc(ec, fd, mod, fun, args.buff, args.index, &reply) < 0) {
        fprintf(stderr, "ei_rpc %s:%s failed\n", mod, fun);
        return -1;
    }
    int res = report(ec, fd, to, tag, reply.buff, reply.index);
    ei_x_free(&args);
    ei_x_free(&reply);
    return res;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s alive cookie node inbox\n", argv[0]);
        return 2;
    }
    char *alive = argv[1], *cookie = argv[2], *node = argv[3], *inbox = argv[4];
    char full[512];
    snprintf(full, sizeof full, "%s@127.0.0.1", alive);
    ei_cnode ec;
    struct in_addr addr;
    addr.s_addr = htonl(INADDR_LOOPBACK);
    if (ei_init() != 0 || ei_connect_xinit(&ec, "127.0.0.1", alive, full, &addr, cookie, 0) < 0) {
        fprintf(stderr, "ei init failed\n");
        return 1;
    }
    int fd = ei_connect_tmo(&ec, node, 10000);
    if (fd < 0) {
        fprintf(stderr, "ei_connect to %s failed\n", node);
        return 1;
    }
    /* {self(), hello, 42} to the registered name; the test answers our pid */
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, 3);
    ei_x_encode_pid(&x, ei_self(&ec));
    ei_x_encode_atom(&x, "hello");
    ei_x_encode_long(&x, 42);
    if (ei_reg_send(&ec, fd, inbox, x.buff, x.index) < 0) {
        fprintf(stderr, "ei_reg_send failed\n");
        return 1;
    }
    ei_x_free(&x);
    for (;;) {
        erlang_msg msg;
        ei_x_buff in;
        ei_x_new(&in);
        int got = ei_xreceive_msg_tmo(fd, &msg, &in, 10000);
        if (got == ERL_TICK) {
            ei_x_free(&in);
            continue;
        }
        if (got == ERL_ERROR) {
            fprintf(stderr, "receive failed\n");
            return 1;
        }
        int index = 0, version;
        ei_decode_version(in.buff, &index, &version);
        if (report(&ec, fd, inbox, "echoed", in.buff + index, in.index - index) < 0)
            return 1;
        ei_x_free(&in);
        break;
    }
    if (rpc(&ec, fd, inbox, "rpc", "pymod", "add") < 0 || rpc(&ec, fd, inbox, "rpc_missing", "pymod", "missing") < 0)
        return 1;
    return 0;
}
