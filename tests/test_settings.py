"""One home for defaults and limits (styxfs/llama/settings.py): every reader
of a setting takes it from there."""

from __future__ import annotations

import pytest

from coordinator.config import NODE_KEYS, DeploymentConfig
from styxfs.errors import StyxError
from styxfs.llama.cli import serve
from styxfs.llama.namespace import LlamaTree, RootBackend, SessionBackend
from styxfs.llama.node import NodeOptions
from styxfs.llama.sessions import Session
from styxfs.llama.settings import NODE, SESSION, Sampling
from styxfs.tree import tokenize

ODD = {"temperature": 0.25, "topk": 7, "topp": 0.5, "minp": 0.125, "seed": 42, "maxtokens": 9,
       "repeatpenalty": 1.5, "stop": ("it's", "two words", ""), "mode": "raw",
       "system": b"You are 'terse'; answer  in\ta word.", "overflow": "refuse",
       "grammar": b'root ::= "it\'s" | "two words"\n', "schema": b"",  # one constraint at a time
       "speculate": "5"}


def test_every_session_setting_has_an_odd_value_here():
    assert set(ODD) == set(SESSION)  # a new setting must join these tests


def test_what_a_coordinator_sends_gives_a_node_session_the_same_settings():
    original = Sampling(**ODD)
    copy = Sampling()
    for line in original.ctl_text().splitlines():
        verb, _, rest = line.partition(" ")
        copy.set(verb, [rest] if SESSION[verb].raw and rest else [] if SESSION[verb].raw else tokenize(rest))
    for name, value in original.file_writes({}):  # texts go in the session's files, never as ctl lines
        setattr(copy, name, value)
    assert copy == original


def test_every_setting_is_a_ctl_verb_and_a_params_line():
    tree = LlamaTree(SessionBackend(), RootBackend())
    session = Session(1, "glenda", tree.defaults)
    verbs = tree.session_ctl(session).verbs
    assert set(SESSION) <= set(verbs)
    params = session.sampling.lines()
    for name in SESSION:
        if SESSION[name].kind not in (tuple, bytes):
            assert f"\n{name} " in "\n" + params


@pytest.mark.parametrize("name", [n for n, s in SESSION.items() if s.kind in (int, float)])
def test_each_numeric_setting_is_checked_against_its_range(name):
    setting = SESSION[name]
    s = Sampling()
    s.set(name, [str(setting.high)])
    assert getattr(s, name) == setting.high
    with pytest.raises(StyxError, match="out of range"):
        s.set(name, [str(setting.high * 2 + 1)])


def test_speculate_is_auto_off_or_a_number_of_tokens():
    s = Sampling()
    for value in ("off", "3", "auto"):
        s.set("speculate", [value])
        assert s.speculate == value
    for bad, why in (("0", "out of range"), ("65", "out of range"), ("some", "use auto or off or a number")):
        with pytest.raises(StyxError, match=why):
            s.set("speculate", [bad])
    assert s.speculate == "auto"  # a refused value changes nothing


def test_the_node_its_command_and_the_config_share_the_node_defaults():
    options = {p.name: p for p in serve.params}
    for key, cli in [("ctx", "ctx"), ("gpulayers", "gpu_layers"), ("threads", "threads"), ("batch", "batch"),
                     ("slots", "slots"), ("maxsessions", "max_sessions"), ("sessiontimeout", "session_timeout"),
                     ("maxconnections", "max_connections")]:
        limit = NODE[key]
        assert options[cli].default == limit.default == getattr(NodeOptions(), cli), key
        assert (options[cli].type.min, options[cli].type.max) == (limit.low, limit.high), key
    config = DeploymentConfig.from_dict({})
    for key, option in NODE_KEYS.items():
        assert getattr(config.model, key) == NODE[option].default
    assert config.network.sessionTimeout == NODE["sessiontimeout"].default * 1000
