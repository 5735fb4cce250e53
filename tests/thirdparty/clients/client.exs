# An Elixir node against a beambridge node: GenServer.call to the receiver, :erpc.call into an
# exposed Python function, monitors on names both ways. Every result goes back to the Python
# mailbox `results` as a term, for the test to check.
[py, recv, recv_name, results, watched] = Enum.map(System.argv(), &String.to_atom/1)
report = fn tag, value -> send({results, py}, {tag, value}) end
true = Node.connect(py)

report.(:gen_call, GenServer.call({recv_name, recv}, {:hello, 7}, 5000))
report.(:erpc, :erpc.call(py, :pymod, :add, [40, 2], 5000))
report.(:erpc_error,
  try do
    :erpc.call(py, :pymod, :fail, ["nope"], 5000)
  catch
    kind, reason -> {kind, reason}
  end)

ref = Process.monitor({watched, py})
report.(:monitoring, ref)
receive do
  {:DOWN, ^ref, _, _, _} = down -> report.(:down, down)
after
  5000 -> report.(:down, :timeout)
end

ghost = Process.monitor({:bb_no_such_name, py})
receive do
  {:DOWN, ^ghost, _, _, _} = down -> report.(:ghost, down)
after
  5000 -> report.(:ghost, :timeout)
end

# a name here, for Python to monitor; it exits with the reason Python sends it
main = self()
spawn(fn ->
  Process.register(self(), :bb_elixir_named)
  send(main, :registered)
  receive do
    {:exit, reason} -> exit(reason)
  end
end)
receive do
  :registered -> report.(:registered, self())
end
receive do
  :finish -> :ok
after
  10000 -> :ok
end
