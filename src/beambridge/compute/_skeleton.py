"""``beambridge compute new NAME``: a ready-to-build Erlang project for your own jobs.

Stands in for MochiWeb's old project-skeleton script: an OTP application with a sample
job module, its EUnit test, a Makefile that builds with plain ``erlc`` (no rebar, no
network), and a service config that allows the job module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .._errors import UsageError

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}\Z")


def create(name: str, parent: Path | str = ".") -> Path:
    """Write the project into ``parent/name`` (which must not exist) and return its path."""
    if not _NAME.match(name):
        raise UsageError(f"project name must be a plain Erlang atom (a-z, 0-9, _; a letter first): {name!r}")
    root = Path(parent) / name
    if root.exists():
        raise UsageError(f"{root} already exists")
    files = {
        f"src/{name}.app.src": _APP,
        f"src/{name}_jobs.erl": _JOBS,
        f"test/{name}_jobs_tests.erl": _TESTS,
        "Makefile": _MAKEFILE,
        "README.md": _README,
        ".gitignore": "ebin/\nerl_crash.dump\n",
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.replace("{{name}}", name))
    config = {"job_modules": [f"{name}_jobs"], "code_paths": ["ebin"], "port": 8080, "local_nodes": 2}
    (root / "beambridge.json").write_text(json.dumps(config, indent=2) + "\n")
    return root


_APP = """{application, {{name}},
 [{description, "{{name}}: job modules for a beambridge compute service"},
  {vsn, "0.1.0"},
  {registered, []},
  {applications, [kernel, stdlib]},
  {env, []},
  {modules, [{{name}}_jobs]}]}.
"""

_JOBS = """%%% @doc Job functions for the beambridge compute service.
%%%
%%% Every exported function can be named in a request as "{{name}}_jobs:function" once
%%% beambridge.json lists this module in job_modules. Jobs receive JSON values: binaries
%%% for strings, maps with binary keys, lists, numbers, true/false/null. Return the same
%%% kinds of values (tuples become arrays, atoms strings).
-module({{name}}_jobs).
-export([greet/1, word_lengths/1, add_counts/2]).

%% A single call: {"op": "call", "fun": "{{name}}_jobs:greet", "args": ["Ada"]}
greet(Name) when is_binary(Name) ->
    <<"Hello, ", Name/binary, "!">>.

%% A mapper: one text in, {Length, 1} per word out.
%% {"op": "mapreduce", "map": "{{name}}_jobs:word_lengths",
%%  "reduce": "{{name}}_jobs:add_counts", "items": ["some text", "more text"]}
word_lengths(Text) when is_binary(Text) ->
    [{byte_size(Word), 1} || Word <- binary:split(Text, [<<" ">>, <<"\\n">>], [global, trim_all])].

%% A reducer: must give the same answer when fed its own outputs (it runs per chunk on
%% the workers, then once more over the chunk results).
add_counts(_Length, Counts) ->
    lists:sum(Counts).
"""

_TESTS = """-module({{name}}_jobs_tests).
-include_lib("eunit/include/eunit.hrl").

greet_test() ->
    ?assertEqual(<<"Hello, Ada!">>, {{name}}_jobs:greet(<<"Ada">>)).

word_lengths_test() ->
    ?assertEqual([{2, 1}, {5, 1}], {{name}}_jobs:word_lengths(<<"hi there">>)),
    ?assertEqual([], {{name}}_jobs:word_lengths(<<"  ">>)).

add_counts_is_rereducible_test() ->
    Counts = [1, 1, 1, 1, 1],
    ?assertEqual({{name}}_jobs:add_counts(3, Counts),
                 {{name}}_jobs:add_counts(3, [{{name}}_jobs:add_counts(3, [1, 1]),
                                              {{name}}_jobs:add_counts(3, [1, 1, 1])])).
"""

_MAKEFILE = """# Build with plain erlc (Debian's erlang-nox); no rebar, no network.
ERLC ?= erlc
ERL  ?= erl

.PHONY: all test serve clean

all: ebin/{{name}}.app

ebin/{{name}}.app: src/*.erl src/{{name}}.app.src
\tmkdir -p ebin
\t$(ERLC) -o ebin src/*.erl
\tcp src/{{name}}.app.src ebin/{{name}}.app

test: all
\t$(ERLC) -o ebin test/*.erl
\t$(ERL) -noshell -pa ebin -eval \\
\t  'case eunit:test({{name}}_jobs_tests, [verbose]) of ok -> halt(0); _ -> halt(1) end.'

serve: all
\tbeambridge compute serve --config beambridge.json

clean:
\trm -rf ebin
"""

_README = """# {{name}}

Job modules for a [beambridge](https://pypi.org/project/beambridge/) compute service.

    make            # compile into ebin/
    make test       # EUnit
    make serve      # beambridge compute serve --config beambridge.json (port 8080, 2 workers)

Then, from Python:

    from beambridge.compute import Client
    client = Client("http://127.0.0.1:8080")
    client.call("{{name}}_jobs:greet", "Ada")
    client.mapreduce("{{name}}_jobs:word_lengths", ["a text", "another"], "{{name}}_jobs:add_counts")

Add functions to `src/{{name}}_jobs.erl` (or new modules, listed in `beambridge.json`'s
`job_modules`). Only listed modules can be called; requests never carry code.
"""
