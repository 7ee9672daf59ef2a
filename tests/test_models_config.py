"""Several models in one deployment: the config's models section, a node's
model, where a setting comes from, generate-config, and what is refused."""

import json
import re

import pytest
from click.testing import CliRunner

from coordinator.cli import generate_args, main
from coordinator.config import ConfigError, DeploymentConfig, generate
from coordinator.launch import node_command

TWO = {
    "name": "two",
    "model": {"contextSize": 1024, "threads": 2},
    "models": {"small": {"path": "/m/small.gguf", "contextSize": 4096, "chatTemplateFile": "/t/chatml.jinja"},
               "big": {"path": "/m/big.gguf"}},
    "nodes": [{"id": "a", "port": 9000, "model": "small"}, {"id": "b", "port": 9001, "model": "big", "threads": 8},
              {"id": "c", "port": 9002}],
}


def test_models_section_and_each_node_names_its_model():
    config = DeploymentConfig.from_dict(TWO)
    assert config.model_names() == ["small", "big"]
    assert config.default_model == "small"
    assert [config.node_model(n) for n in config.nodes] == ["small", "big", "small"]  # no model: the default
    assert config.model_path("big") == "/m/big.gguf"


def test_a_setting_comes_from_the_node_then_its_model_then_the_model_section():
    config = DeploymentConfig.from_dict(TWO)
    a, b, _ = config.nodes
    assert config.node_value(a, "contextSize") == 4096  # models.small's
    assert config.node_value(b, "contextSize") == 1024  # model's: big says nothing
    assert config.node_value(b, "threads") == 8  # the node's own
    assert config.node_value(a, "threads") == 2
    assert config.node_value(a, "chatTemplateFile") == "/t/chatml.jinja"
    assert config.node_value(b, "chatTemplateFile") is None


def test_each_node_is_started_on_its_model():
    config = DeploymentConfig.from_dict(TWO)
    a, b, _ = config.nodes
    small, big = node_command(config, a, "tcp!127.0.0.1!9000"), node_command(config, b, "tcp!127.0.0.1!9001")
    assert small[small.index("--model") + 1] == "/m/small.gguf"
    assert small[small.index("--ctx") + 1] == "4096"
    assert small[small.index("--chat-template-file") + 1] == "/t/chatml.jinja"
    assert big[big.index("--model") + 1] == "/m/big.gguf"
    assert "--chat-template-file" not in big


def test_model_path_alone_is_one_model_as_before(tmp_path):
    config = DeploymentConfig.from_dict({"modelPath": "/m/tiny.gguf", "nodes": [{"id": "a"}]})
    assert config.model_names() == ["tiny"]  # the file's stem
    assert config.model_path("tiny") == "/m/tiny.gguf"
    assert "models" not in config.to_dict()  # saved as it was
    assert DeploymentConfig.from_dict({}).model_names() == ["smollm2"]  # the default model, by its name
    assert DeploymentConfig.from_dict({"modelPath": "gemma3-270m"}).model_names() == ["gemma3-270m"]
    named = DeploymentConfig.from_dict({"modelPath": "/m/tiny.gguf", "nodes": [{"model": "tiny"}]})
    assert named.nodes[0].model == "tiny"


def test_a_config_round_trips(tmp_path):
    config = DeploymentConfig.from_dict(TWO)
    config.save(tmp_path / "c.json")
    again = DeploymentConfig.load(tmp_path / "c.json")
    assert again.models == config.models
    assert [n.model for n in again.nodes] == ["small", "big", None]


@pytest.mark.parametrize("change, where", [
    (lambda c: c["nodes"][0].update(model="medium"), "nodes[0].model: no such model 'medium'"),
    (lambda c: c["models"]["small"].update(contextsize=1), "models.small.contextsize: unknown key"),
    (lambda c: c["nodes"][1].update(modle="big"), "nodes[1].modle: unknown key"),
    (lambda c: c["models"]["big"].pop("path"), "models.big.path: missing"),
    (lambda c: c["models"].update({"a/b": {"path": "x"}}), "models.a/b: a model's name is"),
    (lambda c: c["models"].update(big=[]), "models.big: must be an object"),
    (lambda c: c["models"]["big"].update(contextSize=-1), "models.big.contextSize:"),
    (lambda c: c.update(modelPath="/m/x.gguf"), "modelPath: give the models section or modelPath, not both"),
    (lambda c: c.update(models=[]), "models: must be an object"),
])
def test_bad_configs_are_refused_with_the_keys_path(change, where):
    config = json.loads(json.dumps(TWO))
    change(config)
    with pytest.raises(ConfigError, match="^" + re.escape("config: " + where)):
        DeploymentConfig.from_dict(config)


def test_a_model_named_twice_in_a_file_is_refused(tmp_path):
    path = tmp_path / "twice.json"
    path.write_text('{"models": {"a": {"path": "/m/a.gguf"}, "a": {"path": "/m/b.gguf"}}}')
    with pytest.raises(ConfigError, match=r"twice\.json: models\.a: duplicate model name"):
        DeploymentConfig.load(path)


def test_generate_several_models():
    config = generate({"small": "/m/small.gguf", "big": "/m/big.gguf"}, {"small": 2, "big": 1}, base_port=9000)
    assert config.model_names() == ["small", "big"]
    assert [(n.id, n.port, n.model) for n in config.nodes] == [
        ("node-0", 9000, "small"), ("node-1", 9001, "small"), ("node-2", 9002, "big")]


def test_generate_args():
    assert generate_args([], []) == (None, 2)
    assert generate_args(["/m/x.gguf"], ["3"]) == ("/m/x.gguf", 3)
    assert generate_args(["a=/m/a.gguf", "b=smollm2"], ["a=2"]) == ({"a": "/m/a.gguf", "b": "smollm2"},
                                                                     {"a": 2, "b": 1})
    for models, counts, problem in [
        (["a=/x", "a=/y"], [], "--model: a repeated name"),
        (["a=/x", "/y"], [], "--model: a repeated name, or a PATH without NAME="),
        (["/x", "/y"], [], "--model: give one PATH"),
        (["a=/x"], ["c=2"], "--nodes: c: name a model"),
        (["/x"], ["a=2"], "--nodes: give N for one model"),
        ([], ["0"], "--nodes: '0' is not a number of nodes"),
        (["a=/x"], ["a=many"], "--nodes a: 'many' is not a number"),
    ]:
        with pytest.raises(ConfigError, match="^" + re.escape(problem)):
            generate_args(models, counts)


def test_generate_config_command(tmp_path):
    out = tmp_path / "d.json"
    run = CliRunner().invoke(main, ["deploy", "generate-config", "--model", "small=/m/small.gguf", "--model",
                                    "big=/m/big.gguf", "--nodes", "small=2", "--nodes", "big=1", "--output", str(out),
                                    "--base-port", "9100"])
    assert run.exit_code == 0, run.output
    assert "3 nodes on ports 9100-9102" in run.output
    config = DeploymentConfig.load(out)
    assert config.model_names() == ["small", "big"]
    assert [n.model for n in config.nodes] == ["small", "small", "big"]
    one = CliRunner().invoke(main, ["deploy", "generate-config", "--model", "/m/tiny.gguf", "--nodes", "3",
                                    "--output", str(out)])
    assert one.exit_code == 0, one.output
    assert json.loads(out.read_text())["modelPath"] == "/m/tiny.gguf" and "models" not in json.loads(out.read_text())
    bad = CliRunner().invoke(main, ["deploy", "generate-config", "--model", "a=/x", "--nodes", "b=1",
                                    "--output", str(out)])
    assert bad.exit_code == 2 and "--nodes: b: name a model" in bad.output
