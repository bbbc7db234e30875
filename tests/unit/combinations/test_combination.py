"""The Combination object: content address, JSON round trip, fingerprints refusing changed files."""

from __future__ import annotations

import pytest

from chared_flows.combinations.combination import Combination, make_combination
from chared_flows.combinations.evidence import combination_from_run
from chared_flows.decoding import model_fingerprint as fingerprint
from chared_flows.decoding import DecodeConfig
from chared_flows.errors import ConfigError, ModelLoadError
from tests.unit.combinations.conftest import write_run


def test_same_content_same_hash_and_evidence_does_not_count(tiny_dirs):
    config = DecodeConfig.build(weights=[0.5, 0.5], mode="chared", max_new_chars=8)
    a = make_combination(tiny_dirs, config, evidence={"run_id": "r1"})
    b = make_combination(tiny_dirs, config, evidence={"run_id": "r2"})
    assert a.content_hash == b.content_hash
    assert make_combination(tiny_dirs, config.replace(max_new_chars=9)).content_hash != a.content_hash
    assert make_combination(tiny_dirs, config.replace(weights=[0.6, 0.4])).content_hash != a.content_hash
    back = Combination.from_json(a.to_json())
    assert back == a and back.decoding == config and back.content_hash == a.content_hash


def test_a_changed_member_file_is_refused_in_one_line(tiny_dirs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dirs[0], copy)
    combo = make_combination([str(copy), tiny_dirs[1]], DecodeConfig.build(mode="chared"))
    combo.verify()  # unchanged: fine
    with (copy / "config.json").open("a") as fh:
        fh.write("\n")
    with pytest.raises(ConfigError, match=r"member .*copy.* changed since it was promoted") as err:
        combo.verify()
    assert "\n" not in str(err.value)


def test_fingerprints_name_what_they_hash(tiny_dirs, tmp_path):
    assert fingerprint(tiny_dirs[0]).startswith("dir:sha256:")
    served = fingerprint(f"served:http://127.0.0.1:9?tokenizer={tiny_dirs[0]}")
    assert served.startswith("served:sha256:") and served != fingerprint(f"served:http://127.0.0.1:8?tokenizer={tiny_dirs[0]}")
    with pytest.raises(ModelLoadError, match="nothing-here"):
        fingerprint(str(tmp_path / "nothing-here"))


def test_a_run_variant_becomes_a_combination_with_evidence(tiny_dirs, tmp_path):
    report = {"comparisons": [{"ensemble": "mix", "single": "a", "metric": "exact", "diff": 0.5, "p_holm": 0.01,
                               "verdict": "better"},
                              {"ensemble": "other", "single": "a", "metric": "exact", "diff": 0.1}]}
    run_dir = write_run(tmp_path / "r1", tiny_dirs, report=report)
    combo = combination_from_run(run_dir, "mix")
    assert combo.members == tiny_dirs and combo.decoding.weights == (0.7, 0.3)
    assert combo.decoding.max_new_chars == 12 and combo.decoding.mode == "chared"
    ev = combo.evidence
    assert ev["run_id"] == "r1" and ev["variant"] == "mix"
    assert ev["metrics"] == {"n": 2, "errors": 0, "means": {"exact": 0.5}}
    assert [c["diff"] for c in ev["comparisons"]] == [0.5]  # the variant's own comparisons only
    assert ev["verdicts"] == {"vs.a.exact": "better (p_holm 0.01)"}
    assert combo.template.ref == "math_answer@1" and combo.template.text == ""  # no templates dir given


def test_error_rows_and_unknown_variants_are_refused(tiny_dirs, tmp_path):
    run_dir = write_run(tmp_path / "r1", tiny_dirs, errors=1)
    with pytest.raises(ConfigError, match=r"1 error row\(s\) of 2 .*--force"):
        combination_from_run(run_dir, "mix")
    assert combination_from_run(run_dir, "mix", force=True).evidence["metrics"]["errors"] == 1
    with pytest.raises(ConfigError, match=r"no variant 'nope'; its variants: mix, a"):
        combination_from_run(run_dir, "nope")
    with pytest.raises(ConfigError, match="no A/B run"):
        combination_from_run(tmp_path / "missing", "mix")


def test_a_combination_pins_the_backend_each_member_ran_on(tiny_dirs):
    config = DecodeConfig.build(mode="chared", max_new_chars=4)
    pinned = make_combination(tiny_dirs, config)  # tests run with CHARED_BACKEND=transformers (tests/conftest.py)
    assert pinned.backends == ["transformers", "transformers"] and "on transformers/transformers" in pinned.describe()
    unpinned = make_combination(tiny_dirs, config, backends=None)
    assert "backends" not in unpinned.content()  # hashed as before the field existed: registry versions stay
    assert len({pinned.content_hash, unpinned.content_hash,
                make_combination(tiny_dirs, config, backends=["llama_cpp", "transformers"]).content_hash}) == 3
    assert Combination.from_json(pinned.to_json()) == pinned
    with pytest.raises(ConfigError, match=r"combination is invalid: backend 'cuda' of member .* is not one of transformers, llama_cpp"):
        Combination.from_json(pinned.to_json().replace('"transformers"', '"cuda"', 1))
    with pytest.raises(ConfigError, match="1 backends for 2 members"):
        make_combination(tiny_dirs, config, backends=["transformers"])


def test_the_pinned_backend_wins_over_this_machines_choice(tiny_dirs, monkeypatch):
    """$CHARED_BACKEND=llama_cpp cannot run the tiny HF directories: unpinned, loading fails; pinned, it loads."""
    config = DecodeConfig.build(mode="chared", max_new_chars=4)
    pinned = make_combination(tiny_dirs, config)
    monkeypatch.setenv("CHARED_BACKEND", "llama_cpp")
    with pytest.raises(ConfigError, match="backend llama_cpp runs GGUF files"):
        make_combination(tiny_dirs, config, backends=None).load_members()
    members = pinned.load_members()
    assert [m.assets.backend.identity()["kind"] for m in members] == ["transformers", "transformers"]


def test_a_member_pinned_to_llama_cpp_without_the_binding_is_refused_with_the_fix(tiny_dirs, monkeypatch):
    from chared_flows.decoding.backends import auto

    monkeypatch.setattr(auto, "llama_cpp_available", lambda: False)
    combo = make_combination(tiny_dirs, DecodeConfig.build(mode="chared"), backends=["llama_cpp", "transformers"])
    with pytest.raises(ConfigError, match=r"member .*/a' of combination was measured on llama_cpp .*make setup-llamacpp"):
        combo.load_members()
    assert len(combo.load_members(backend="transformers")) == 2  # knowingly overridden


def test_backends_are_read_back_from_the_runs_recorded_policy():
    from chared_flows.decoding.backends.auto import AUTO_LLAMA_CPP, AUTO_TRANSFORMERS, chosen_under

    specs = ["smollm2", "/models/some-hf-dir", "llama_cpp:gemma3-270m", "served:http://127.0.0.1:8080?tokenizer=smollm2"]
    assert chosen_under(AUTO_LLAMA_CPP, specs) == ["llama_cpp", "transformers", "llama_cpp", "served"]
    assert chosen_under(AUTO_TRANSFORMERS, specs) == ["transformers", "transformers", "llama_cpp", "served"]
    assert chosen_under("transformers", specs) == ["transformers", "transformers", "llama_cpp", "served"]
    assert chosen_under("", specs) is None  # a run from before runs logged their policy: not pinned


def test_a_run_variant_is_pinned_to_the_backend_its_run_recorded(tiny_dirs, tmp_path):
    assert combination_from_run(write_run(tmp_path / "old", tiny_dirs), "mix").backends is None
    run_dir = write_run(tmp_path / "new", tiny_dirs, backend="auto: transformers (no llama_cpp binding)")
    assert combination_from_run(run_dir, "mix").backends == ["transformers", "transformers"]
