%%% @doc The uwsgiecho example of the old uWSGI Erlang plugin, supervised (bbw_sup): a
%%% registered server that answers every message to the registered name `useless' on the
%%% sender's node (`{useless, Node} ! ...'), as the plugin's example did. The sender's node
%%% is taken from a `{reply_to, Node, Message}' message when given, else every hidden node
%%% (a Python node) gets the answer. A call is answered directly.
-module(bbw_echo).
-behaviour(gen_server).
-export([start_link/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

%% @doc Start the server registered as `Name' (fails if the name is taken).
-spec start_link(atom()) -> {ok, pid()} | {error, term()}.
start_link(Name) -> gen_server:start_link({local, Name}, ?MODULE, Name, []).

-spec init(atom()) -> {ok, atom()}.
init(Name) -> {ok, Name}.

-spec handle_call(term(), gen_server:from(), atom()) -> {reply, {i_am_echo, term()}, atom()}.
handle_call(Message, _From, Name) -> {reply, bbw_examples:echo(Message), Name}.

-spec handle_cast(term(), atom()) -> {noreply, atom()}.
handle_cast(Message, Name) -> handle_info(Message, Name).

-spec handle_info(term(), atom()) -> {noreply, atom()}.
handle_info({reply_to, Node, Message}, Name) when is_atom(Node) ->
    {useless, Node} ! bbw_examples:echo(Message),
    {noreply, Name};
handle_info(Message, Name) ->
    _ = [{useless, N} ! bbw_examples:echo(Message) || N <- nodes(hidden)],
    {noreply, Name}.
