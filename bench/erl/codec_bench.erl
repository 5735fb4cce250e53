%% BEAM's side of bench/codec_bench.py.
%%
%% Python writes one file: term_to_binary({Config, Payloads}) where
%%   Config   = #{target_ns := integer(), repeats := integer()}
%%   Payloads = [{Name, Reference, Checks, Timed}]
%%   Reference = beambridge's encoding of the payload (the term BEAM benchmarks)
%%   Checks    = [{Library, Bytes | none}]: each library's encoding, checked =:= Reference's term.
%%   Timed     = false for the edge-case probes, which are only checked.
%% For each payload this module times term_to_binary/1 and binary_to_term/1 (best batch of
%% `repeats`, each batch at least `target_ns` long), and writes back, in the output file:
%%   {Release, [{Name, EncodeNs, DecodeNs, BeamBytes, [{Library, ok | {fail, Reason}}]}]}
%% (EncodeNs and DecodeNs are undefined when the payload is not timed).
-module(codec_bench).
-export([main/1]).

main([InFile, OutFile]) ->
    {ok, Input} = file:read_file(InFile),
    {Config, Payloads} = binary_to_term(Input),
    Results = [run_payload(Config, P) || P <- Payloads],
    Release = list_to_binary(otp_version()),
    ok = file:write_file(OutFile, term_to_binary({Release, Results}, [{minor_version, 1}])),
    halt(0).

otp_version() ->
    Major = erlang:system_info(otp_release),
    File = filename:join([code:root_dir(), "releases", Major, "OTP_VERSION"]),
    case file:read_file(File) of
        {ok, Text} -> string:trim(binary_to_list(Text));
        _ -> Major
    end.

run_payload(Config, {Name, Reference, Checks, Timed}) ->
    Term = binary_to_term(Reference),
    Verdicts = [{Library, check(Term, Bytes)} || {Library, Bytes} <- Checks],
    Beam = term_to_binary(Term),
    case Timed of
        true ->
            EncodeNs = time_op(Config, fun() -> term_to_binary(Term) end),
            DecodeNs = time_op(Config, fun() -> binary_to_term(Beam) end),
            {Name, EncodeNs, DecodeNs, Beam, Verdicts};
        false ->
            {Name, undefined, undefined, Beam, Verdicts}
    end.

check(_Term, none) ->
    {fail, <<"no encoding">>};
check(Term, Bytes) ->
    try binary_to_term(Bytes) of
        Decoded when Decoded =:= Term -> ok;
        Decoded -> {fail, describe("decodes to a different term: ~0P", [Decoded, 12])}
    catch
        Class:Reason -> {fail, describe("BEAM cannot decode it: ~p:~0P", [Class, Reason, 8])}
    end.

describe(Format, Args) ->
    Text = iolist_to_binary(io_lib:format(Format, Args)),
    case byte_size(Text) > 200 of
        true -> <<(binary:part(Text, 0, 200))/binary, "...">>;
        false -> Text
    end.

%% Per-operation time in nanoseconds (a float): warm up, grow the batch until it lasts at
%% least target_ns, then keep the fastest of `repeats` batches. Each batch runs in a fresh
%% process so garbage from one measurement is not collected during the next.
time_op(#{target_ns := Target, repeats := Repeats}, Fun) ->
    _ = Fun(),
    N = calibrate(Fun, 1, Target),
    Best = lists:min([batch(Fun, N) || _ <- lists:seq(1, Repeats)]),
    Best / N.

calibrate(Fun, N, Target) ->
    case batch(Fun, N) >= Target orelse N >= 1 bsl 24 of
        true -> N;
        false -> calibrate(Fun, N * 2, Target)
    end.

batch(Fun, N) ->
    Parent = self(),
    {Pid, Ref} = spawn_monitor(fun() ->
        Start = erlang:monotonic_time(nanosecond),
        loop(Fun, N),
        Parent ! {self(), erlang:monotonic_time(nanosecond) - Start}
    end),
    receive
        {Pid, Elapsed} ->
            erlang:demonitor(Ref, [flush]),
            Elapsed;
        {'DOWN', Ref, process, Pid, Reason} ->
            erlang:error({benchmark_process_died, Reason})
    end.

loop(_Fun, 0) -> ok;
loop(Fun, N) ->
    _ = Fun(),
    loop(Fun, N - 1).
