"""params.yaml, the profiles and the pins: the knobs are what the code reads, nothing more."""

import re
from pathlib import Path

import pytest
import yaml

from soar import config

ROOT = Path(__file__).resolve().parent.parent


def test_default_params_load_as_the_addition_world():
    cfg = config.load(ROOT / "params.yaml")
    assert cfg.profile == "addition"
    assert cfg.model.name == "addition" and cfg.fail_at_k.pools == ("addition_test",)
    assert config.load(ROOT / "params.yaml", {"profile": "tiny"}).model.name == "smollm2-135m-instruct"


@pytest.mark.parametrize("profile", ["smoke", "paper", "tiny"])
def test_every_profile_loads(profile):
    cfg = config.load(ROOT / "params.yaml", {"profile": profile})
    assert cfg.profile == profile


def test_paper_profile_has_table3_values():
    """PAPER.md Table 3 / protocol, one assert per knob that the paper states."""
    c = config.load(ROOT / "params.yaml", {"profile": "paper"})
    assert c.model.name == "meta-llama/Llama-3.2-3B-Instruct"
    assert (c.soar.n, c.soar.group_size, c.soar.groups_per_step, c.soar.r, c.soar.q_r) == (64, 4, 2, 4, 64)
    assert (c.soar.tau, c.soar.window, c.soar.outer_steps) == (0.01, 3, 200)
    assert (c.student.steps, c.student.extra_steps_after_promotion) == (10, 5)
    assert (c.student.questions_per_step, c.student.samples_per_question) == (8, 32)
    assert (c.student.lr, c.teacher.lr, c.student.kl_coef, c.teacher.kl_coef) == (1e-5, 1e-5, 0.001, 0.001)
    assert (c.student.warmup_steps, c.teacher.warmup_steps) == (0, 20)
    assert (c.student.max_new_tokens, c.teacher.max_new_tokens) == (1024, 512)
    assert (c.fail_at_k.k, c.fail_at_k.max_new_tokens, c.fail_at_k.temperature) == (128, 1024, 1.0)
    assert c.student.adapter == c.teacher.adapter == "full"
    assert (c.teacher.response_prefix, c.teacher.one_shot, c.soar.reward_metric) == ("", False, "accuracy")


def test_variant_overrides_apply_after_the_profile_and_before_explicit_overrides():
    c = config.load(ROOT / "params.yaml", {"profile": "paper"}, variant="intrinsic")
    assert (c.soar.reward, c.soar.n) == ("intrinsic", 64)
    c = config.load(ROOT / "params.yaml", {"soar": {"reward": "grounded"}}, variant="intrinsic")
    assert c.soar.reward == "grounded"
    with pytest.raises(config.ConfigError, match="unknown variant 'nope'"):
        config.load(ROOT / "params.yaml", variant="nope")
    with pytest.raises(config.ConfigError, match=r"variant 'bad'.*soar: unknown key\(s\) \['rewrd'\]"):
        config.load(ROOT / "params.yaml", {"variants": {"bad": {"soar": {"rewrd": 1}}}}, variant="bad")


def test_fingerprints_change_with_the_code(tmp_path, monkeypatch):
    """A stage that DVC re-runs because its code changed computes anew: a SOAR state, a fresh
    student or an evaluation left by other code is never resumed or skipped (config.code_digest)."""
    import shutil

    from soar import retrain

    copy = tmp_path / "soar"
    shutil.copytree(ROOT / "soar", copy, ignore=shutil.ignore_patterns("__pycache__"))
    digest = config.code_digest.__wrapped__  # uncached: the copy changes below
    assert digest(copy) == config.code_digest()  # the sources, not where they are
    (copy / "rl.py").write_text((copy / "rl.py").read_text() + "# an edit\n")
    assert digest(copy) != config.code_digest()
    cfg = config.load(ROOT / "params.yaml")
    before, run_before = config.fingerprint(cfg), retrain.run_fingerprint({"method": "oracle"}, 0, [])
    monkeypatch.setattr(config, "code_digest", lambda: digest(copy))
    assert config.fingerprint(cfg) != before
    assert retrain.run_fingerprint({"method": "oracle"}, 0, []) != run_before


def test_fingerprint_ignores_which_runs_exist_but_not_what_a_run_computes():
    a = config.load(ROOT / "params.yaml")
    assert config.fingerprint(a) == config.fingerprint(config.load(ROOT / "params.yaml", {"runs": {"seeds": [0, 1]}}))
    assert config.fingerprint(a) != config.fingerprint(config.load(ROOT / "params.yaml", {"seed": 1}))
    assert config.fingerprint(a) != config.fingerprint(config.load(ROOT / "params.yaml", variant="intrinsic"))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"soar": {"bogus": 1}}, "unknown key"),  # a typo must not be silently ignored
        ({"bogus": 1}, "unknown key"),
        ({"soar": {"n": "64"}}, "soar.n: expected int"),  # strings are not numbers
        ({"soar": {"n": True}}, "soar.n: expected int"),  # bool is an int subclass in Python
        ({"soar": {"promotion": 1}}, "soar.promotion: expected bool"),
        ({"fail_at_k": {"pools": "math_test"}}, "fail_at_k.pools: expected a list"),
        ({"student": 3}, "student: expected a mapping"),
        ({"profile": "nope"}, "has no file"),
        ({"soar": {"reward": "grounde"}}, "soar.reward: 'grounde' is not one of"),
        ({"generation": {"backend": "sglang"}}, "generation.backend: 'sglang' is not one of ['hf', 'vllm']"),
        ({"generation": {"backend": "vllm", "max_model_len": 200}, "student": {"max_new_tokens": 200}},
         "generation.max_model_len: 200 leaves no room for a prompt before student.max_new_tokens=200"),
    ],
)
def test_bad_params_are_rejected_with_the_key(override, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(ROOT / "params.yaml", override)


def test_ints_become_floats_and_lists_tuples():
    cfg = config.from_dict({"student": {"lr": 1}, "fail_at_k": {"pools": ["a", "b"]}})
    assert cfg.student.lr == 1.0 and isinstance(cfg.student.lr, float)
    assert cfg.fail_at_k.pools == ("a", "b")


def test_params_yaml_sets_every_field_explicitly():
    """params.yaml is the glossary a user reads: every knob appears in it."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    full = config.to_dict(config.Config())
    for section, fields in full.items():
        if isinstance(fields, dict) and section != "variants":  # variants: a free mapping
            assert set(data[section]) == set(fields), section
        else:
            assert section in data


def test_every_field_has_a_docstring():
    import dataclasses

    for f in dataclasses.fields(config.Config):
        cls = f.type if isinstance(f.type, type) else getattr(config, str(f.type), None)
        if cls is not None and dataclasses.is_dataclass(cls):
            docs = config.field_docs(cls)
            missing = [g.name for g in dataclasses.fields(cls) if g.name not in docs]
            assert not missing, f"{cls.__name__}: {missing}"


def _pins_pyproject():
    import tomllib

    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = proj["dependencies"] + proj["optional-dependencies"]["dev"] + proj["optional-dependencies"]["ray"]
    return {d.split("==")[0].lower(): d.split("==")[1] for d in deps}


def test_environment_yml_pins_match_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_pins = {d.split("==")[0].lower(): d.split("==")[1] for d in pip if "==" in d}
    assert env_pins == _pins_pyproject()
