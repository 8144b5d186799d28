"""The bad-input catalogue: every mistake a user can make in params, data, models and folders ends with exit code 2
and one first line that names the problem and the fix, before any notebook kernel starts."""
from __future__ import annotations

import errno
import gzip
import json
import shutil
from pathlib import Path

import pytest
from conftest import SQUAD_DIR, synthetic_row

from distill.__main__ import main
from distill.core import params, paths
from distill.parts.tiny import build_model, build_tokenizer


def first_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing was said"
    return lines[0]


def write(tmp: Path, name: str, content: bytes | str) -> str:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def squad_copy(tmp: Path, mutate_train=None, raw_train: bytes | None = None) -> str:
    """A copy of the synthetic SQuAD folder with its train split changed."""
    folder = tmp / "squad"
    shutil.copytree(SQUAD_DIR, folder)
    if raw_train is not None:
        (folder / "train.jsonl.gz").write_bytes(raw_train)
    elif mutate_train is not None:
        with gzip.open(SQUAD_DIR / "train.jsonl.gz", "rt", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        mutate_train(rows)
        with gzip.open(folder / "train.jsonl.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows)
    return str(folder)


def _drop_answers(rows):
    del rows[5]["answers"]


def _v2_empty_answers(rows):
    rows[7]["answers"] = {"text": [], "answer_start": []}


def _answer_start_misses(rows):
    rows[3]["answers"]["answer_start"] = [0]
    rows[3]["answers"]["text"] = ["no such span anywhere"]


def _bad_json_line(rows):
    rows[9] = '{"id": "broken", "context": \n'


def _truncated_gzip(tmp: Path) -> str:
    raw = (SQUAD_DIR / "train.jsonl.gz").read_bytes()
    return squad_copy(tmp, raw_train=raw[: len(raw) // 2])


def _yaml_bomb(levels: int = 12) -> str:
    """A few lines whose aliases of aliases expand to 9**levels values (a 'billion laughs')."""
    lines = ["run_name: bomb", "lora_target_modules: &a0 [q, q, q, q, q, q, q, q, q]"]
    lines += [f"k{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# (case id, argv after `python -m distill`, words the first line must hold: the problem and the fix)
PARAMS_CASES = [
    ("empty-yaml", lambda t: ["validate", write(t, "empty.yaml", "")], ["empty", "run_name"]),
    ("duplicate-key", lambda t: ["validate", write(t, "dup.yaml", "seed: 1\nseed: 2\n")], ["seed", "twice", "keep one"]),
    ("inf-learning-rate", lambda t: ["validate", write(t, "inf.yaml", "learning_rate: .inf\n")],
     ["learning_rate", "finite"]),
    ("nan-temperature", lambda t: ["validate", write(t, "nan.yaml", "temperature: .nan\n")], ["temperature", "finite"]),
    ("not-utf8", lambda t: ["validate", write(t, "latin1.yaml", b"run_name: caf\xe9\n")], ["UTF-8", "save"]),
    ("params-path-is-folder", lambda t: ["validate", str(t)], ["is a folder", "YAML file"]),
    ("missing-params-path", lambda t: ["validate", str(t / "elsewhere" / "smoke.yaml")], ["not found", "profile"]),
    ("set-bad-yaml", lambda t: ["validate", "smoke", "--set", "seed=[1"], ["--set seed=[1", "not valid YAML", "fix"]),
    ("set-without-equals", lambda t: ["validate", "smoke", "--set", "seed"], ["KEY=VALUE"]),
    ("yaml-syntax", lambda t: ["validate", write(t, "bad.yaml", "seed: [1\nrun_name: x\n")], ["not valid YAML", "line"]),
    ("top-level-list", lambda t: ["validate", write(t, "list.yaml", "- 1\n- 2\n")], ["mapping"]),
    ("unknown-key", lambda t: ["validate", "smoke", "--set", "lerning_rate=0.1"], ["lerning_rate", "learning_rate"]),
    ("float-as-string", lambda t: ["validate", "smoke", "--set", "learning_rate=2e-5"], ["learning_rate", "dot"]),
    ("out-of-range", lambda t: ["validate", "smoke", "--set", "max_steps=0"], ["max_steps", ">= 1"]),
    ("run-name-from-bad-file-name", lambda t: ["validate", write(t, "my profile.yaml", "seed: 1\n")],
     ["'my profile'", "set run_name: in the file"]),
    ("capacity-keep-deeper-than-teacher", lambda t: ["validate", "smoke", "--set", "student=prune", "--set",
                                                     "prune_keep=2", "--set", "capacity_keep=[2, 7]"],
     ["capacity_keep", "at most 4"]),
    ("base-run-without-models", lambda t: ["validate", "smoke", "--set", "base_run_dir=artifacts/no_such_run"],
     ["base_run_dir", "run the base run first"]),
    ("bad-choice", lambda t: ["validate", "smoke", "--set", "kd_kind=kl"], ["kd_kind", "one of"]),
    ("run-name-parent-path", lambda t: ["validate", "smoke", "--set", "run_name=../../x"], ["run_name", "a name is"]),
    ("run-name-absolute", lambda t: ["validate", "smoke", "--set", "run_name=/abs"], ["run_name", "output_dir"]),
    ("run-name-empty", lambda t: ["validate", "smoke", "--set", "run_name="], ["run_name", "a name is"]),
    ("deploy-dir-checkout", lambda t: ["validate", "smoke", "--set", "deploy_dir=."], ["deploy_dir", "checkout"]),
    ("deploy-dir-parent", lambda t: ["validate", "smoke", "--set", "deploy_dir=.."], ["deploy_dir", "above it"]),
    ("output-dir-own-folder", lambda t: ["validate", "smoke", "--set", "output_dir=lib"], ["output_dir", "own lib/"]),
    ("accelerate-config-missing", lambda t: ["validate", "smoke", "--set", "num_processes=2", "--set",
                                             "accelerate_config=configs/accelerate/nope.yaml"],
     ["accelerate_config", "nope.yaml", "ddp_cpu.yaml"]),
    ("accelerate-config-not-one", lambda t: ["validate", "smoke", "--set", "num_processes=2", "--set",
                                             f"accelerate_config={write(t, 'acc.yaml', 'learning_rate: 1')}"],
     ["accelerate_config", "not an accelerate config"]),
    ("fsdp-on-cpu", lambda t: ["validate", "smoke", "--set", "num_processes=2", "--set", "device=cpu", "--set",
                               "accelerate_config=configs/accelerate/gemma_fsdp_8gpu.yaml"],
     ["FSDP", "GPUs only", "ddp_cpu.yaml"]),
    ("sharded-teacher-under-ddp", lambda t: ["validate", "smoke", "--set", "num_processes=2", "--set",
                                             "teacher_load_in_4bit=false", "--set", "teacher_placement=sharded"],
     ["teacher_placement: sharded", "FSDP", "replicated"]),
    ("sharded-4bit-teacher", lambda t: ["validate", "smoke", "--set", "teacher_placement=sharded"],
     ["teacher_placement", "teacher_load_in_4bit: false"]),
    ("processes-above-the-cores", lambda t: ["validate", "smoke", "--set", "num_processes=64"],
     ["num_processes", "cores", "num_processes <="]),
    ("cache-k-above-the-vocabulary", lambda t: ["validate", "smoke", "--set", "teacher_cache=topk", "--set",
                                                "teacher_cache_k=100000"], ["teacher_cache_k", "vocabulary"]),
    ("lora-targets-no-module", lambda t: ["validate", "smoke", "--set", "lora_target_modules=[nope_proj]"],
     ["lora_target_modules", "nope_proj", "q_proj"]),
    ("cuda-without-a-gpu", lambda t: ["validate", "smoke", "--set", "device=cuda"], ["device: cuda", "auto"]),
    ("gpu-accelerate-config-on-cpu", lambda t: ["validate", "smoke", "--set", "num_processes=2", "--set",
                                                "accelerate_config=configs/accelerate/ddp_gpu.yaml"],
     ["GPU config", "ddp_cpu.yaml"]),
    ("accelerate-config-empty", lambda t: ["validate", "smoke", "--set", "num_processes=2", "--set",
                                           f"accelerate_config={write(t, 'empty_acc.yaml', '')}"],
     ["accelerate_config", "not an accelerate config"]),
    ("accelerate-config-malformed", lambda t: ["validate", "smoke", "--set", "num_processes=2", "--set",
                                               f"accelerate_config={write(t, 'bad_acc.yaml', 'a: [')}"],
     ["accelerate_config", "not an accelerate config"]),
    ("accelerate-config-folder", lambda t: ["validate", "smoke", "--set", "num_processes=2", "--set",
                                            f"accelerate_config={t}"], ["accelerate_config", "is a folder"]),
    ("output-dir-another-run", lambda t: ["validate", "smoke", "--set", "output_dir=artifacts/other"],
     ["output_dir", "run 'other'", "artifacts/smoke"]),
    ("yaml-that-expands-exponentially", lambda t: ["validate", write(t, "bomb.yaml", _yaml_bomb())],
     ["expands to more than", "write the values out"]),
    ("sweep-negative-questions", lambda t: ["sweep", "smoke", "--name", "x", "--questions", "-5"],
     ["--questions -5", ">= 1"]),
    ("sweep-name-path", lambda t: ["sweep", "smoke", "--name", "../x"], ["--name", "letters"]),
    ("sweep-bad-seeds", lambda t: ["sweep", "smoke", "--name", "x", "--seeds", "a,b"], ["--seeds", "whole numbers"]),
]

DATA_CASES = [
    ("squad-dir-missing", lambda t: str(t / "nowhere"), ["squad_dir", "not a folder"]),
    ("truncated-gzip", _truncated_gzip, ["train.jsonl.gz"]),
    ("rows-without-answers", lambda t: squad_copy(t, _drop_answers), ["train.jsonl.gz", "answers"]),
    ("squad-v2-empty-answers", lambda t: squad_copy(t, _v2_empty_answers), ["train.jsonl.gz", "answer"]),
    ("answer-start-misses", lambda t: squad_copy(t, _answer_start_misses), ["train.jsonl.gz", "answer_start"]),
    ("bad-json-line", lambda t: squad_copy(t, _bad_json_line), ["train.jsonl.gz", "line 10"]),
]


@pytest.mark.parametrize("case,argv,words", PARAMS_CASES, ids=[c[0] for c in PARAMS_CASES])
def test_bad_params_stop_with_one_line_naming_problem_and_fix(case, argv, words, tmp_path, capsys):
    assert main(argv(tmp_path)) == 2
    line = first_error_line(capsys)
    assert line.startswith("error: ")
    for word in words:
        assert word in line, f"{case}: {word!r} missing from {line!r}"


@pytest.mark.parametrize("case,make,words", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_found_before_any_kernel(case, make, words, tmp_path, capsys):
    folder = make(tmp_path)
    assert main(["validate", "smoke", "--set", f"squad_dir={folder}"]) == 2
    line = first_error_line(capsys)
    assert line.startswith("error: ")
    for word in words:
        assert word in line, f"{case}: {word!r} missing from {line!r}"


def test_data_too_small_for_the_subsets_says_which_key_to_change(capsys):
    assert main(["validate", "smoke", "--set", "train_size=5000"]) == 2
    line = first_error_line(capsys)
    assert "5000" in line and "data_pool_rows" in line


@pytest.fixture(scope="module")
def other_vocab_student(tmp_path_factory) -> Path:
    """A tiny student with its own tokenizer (another vocabulary than the tiny teacher's)."""
    rng = __import__("random").Random(0)
    texts = [synthetic_row(rng, i, "train")["context"] for i in range(40)]
    tok = build_tokenizer(texts, vocab_size=300)
    folder = tmp_path_factory.mktemp("other_vocab")
    build_model("student", len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_teacher_and_student_with_different_vocabularies(other_vocab_student, capsys):
    assert main(["validate", "smoke", "--set", f"student={other_vocab_student}"]) == 2
    line = first_error_line(capsys)
    assert "different vocabularies" in line and "pick a student of the teacher's family" in line


@pytest.mark.parametrize("key,value,words", [
    ("layer_map", "[9, 9]", ["layer_map", "out of range", "[0, 4)"]),
    ("layer_map", "[0]", ["layer_map", "1 entries", "2 entries"]),
    ("max_length", "40", ["max_length: 40", "raise max_length to at least"]),
    ("student", "/nonexistent/model", ["not a folder and not a hub id"]),
], ids=["layer-map-out-of-range", "layer-map-too-short", "max-length-too-small", "student-folder-missing"])
def test_bad_model_settings_are_found_before_the_teacher_is_tuned(key, value, words, capsys):
    assert main(["validate", "smoke", "--set", f"{key}={value}"]) == 2
    line = first_error_line(capsys)
    for word in words:
        assert word in line, f"{word!r} missing from {line!r}"


def test_prune_keeping_more_layers_than_the_teacher_has(capsys):
    assert main(["validate", "smoke", "--set", "student=prune", "--set", "prune_keep=9"]) == 2
    assert "prune_keep: keeps 9 layers but the teacher has 4" in first_error_line(capsys)


def test_a_folder_without_config_is_not_a_model(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text("{}")
    assert main(["validate", "smoke", "--set", f"student={tmp_path}"]) == 2
    assert "no config.json" in first_error_line(capsys)


def test_a_hub_id_offline_fails_at_once_not_after_retries(monkeypatch, capsys):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert main(["validate", "smoke", "--set", "teacher=nobody-here/no-such-model"]) == 2
    line = first_error_line(capsys)
    assert "not in the local Hugging Face cache" in line and "local folder" in line
    assert time.perf_counter() - start < 30


def test_deploy_dir_outside_the_project_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(["validate", "smoke", "--set", f"deploy_dir={tmp_path / 'deploy'}"]) == 2
    line = first_error_line(capsys)
    assert "deploy_dir" in line and "outside the project" in line and "under the project" in line


def test_deploy_dir_holding_a_users_files_is_never_replaced(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)  # the user's folder inside "the project"
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "thesis.tex").write_text("months of work")
    assert main(["validate", "smoke", "--set", f"deploy_dir={keep}"]) == 2
    line = first_error_line(capsys)
    assert "not a deployment of this study" in line and "new or empty folder" in line
    assert (keep / "thesis.tex").read_text() == "months of work"


def test_deploy_dir_that_is_ours_or_empty_is_accepted(tmp_path):
    """Ours (the marker), new or empty: replaceable; the same folder with a user's file and no marker: refused."""
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / paths.DEPLOY_MARKER).write_text("{}")
    (ours / "config.json").write_text("{}")
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (ours, tmp_path / "new", empty):
        assert paths.check_replaceable(folder) is None
    (ours / paths.DEPLOY_MARKER).unlink()
    with pytest.raises(paths.NotOurFolder, match="not a deployment of this study"):
        paths.check_replaceable(ours)
    (empty / "notes.txt").write_text("mine")
    with pytest.raises(paths.NotOurFolder, match="not a deployment of this study"):
        paths.check_replaceable(empty)


def test_read_only_reports_folder(monkeypatch, capsys):
    import distill.pipeline.preflight as preflight

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(preflight.tempfile, "NamedTemporaryFile", refuse)
    assert main(["validate", "smoke"]) == 2
    line = first_error_line(capsys)
    assert "reports: cannot write in" in line and "Read-only file system" in line and "DISTILL_REPORTS_DIR" in line


def test_full_disk_before_the_run(monkeypatch, capsys):
    import distill.pipeline.preflight as preflight

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30, 2**20))
    assert main(["validate", "smoke"]) == 2
    line = first_error_line(capsys)
    assert "1 MB free" in line and "free space" in line


def test_full_disk_during_the_run_is_one_line_naming_the_file(monkeypatch, capsys):
    import distill.pipeline.runner as runner

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/artifacts/smoke/students/x.safetensors")
    monkeypatch.setattr(runner, "run_study", full)
    monkeypatch.setattr("distill.core.procs.die_with_parent", lambda **k: None)
    assert main(["run", "smoke"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1
    line = errors[0]
    assert line.startswith("error: cannot write /data/artifacts/smoke/students/x.safetensors: No space left")
    assert "free space" in line


def test_a_params_file_without_run_name_takes_its_file_name(tmp_path, capsys):
    path = write(tmp_path, "my_profile.yaml", "seed: 3\n")
    assert main(["validate", path]) == 0
    assert "run_name my_profile" in capsys.readouterr().out


def test_a_bare_profile_name_still_finds_params(capsys):
    assert main(["validate", "smoke"]) == 0
    assert "ok: smoke is valid" in capsys.readouterr().out


def test_yaml_anchors_and_merge_keys_still_load(tmp_path, capsys):
    path = write(tmp_path, "anchored.yaml", "common: &c\n  seed: 3\n")

    assert params._read_yaml("base: &b {seed: 1}\nrun:\n  <<: *b\n  lr: 2\n", "x")["run"] == {"seed": 1, "lr": 2}
    assert main(["validate", path]) == 2  # `common` is no params key: the anchor file itself is refused, by key
    assert "common: unknown params key" in first_error_line(capsys)


def test_a_relative_params_path_works_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "params/smoke.yaml"]) == 0


def test_a_student_folder_without_a_tokenizer_says_what_is_missing(tiny_paths, tmp_path, capsys):
    _, student = tiny_paths
    shutil.copy(student / "config.json", tmp_path / "config.json")
    assert main(["validate", "smoke", "--set", f"student={tmp_path}"]) == 2
    line = first_error_line(capsys)
    assert line.startswith("error: student: ") and "has no tokenizer" in line and "save the tokenizer" in line


@pytest.mark.parametrize("argv, said", [
    (["squad-subset", "{tmp}/nope.json", "{tmp}/out.json"], "nope.json does not exist"),
    (["squad-subset", "{tmp}", "{tmp}/out.json"], "is a folder, not a file"),
    (["squad-subset", "{tmp}/half.json", "{tmp}/out.json"], "half.json: not a study's results.json"),
    (["squad-subset", "{tmp}/empty.json", "{tmp}/out.json"], "empty.json: not a study's results.json"),
    (["stage", "{tmp}/nope.yaml", "teacher"], "nope.yaml does not exist"),
    (["stage", "{tmp}", "teacher"], "is a folder, not a file"),
    (["train-student", "{tmp}/nope.json"], "nope.json does not exist"),
    (["train-student", "{tmp}"], "is a folder, not a file"),
])
def test_a_missing_file_or_a_folder_for_any_command_is_one_line(tmp_path, capsys, argv, said):
    write(tmp_path, "half.json", '{"meta": {"question_ids": ["a", ')
    write(tmp_path, "empty.json", "{}")
    code = main([a.format(tmp=tmp_path) for a in argv])
    line = first_error_line(capsys)
    assert code == 2 and line.startswith("error: ") and said in line, line
    assert not (tmp_path / "out.json").exists()


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m distill params | head -c 10", shell=True, capture_output=True,
                          text=True)
    assert len(proc.stdout) == 10 and "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


def test_an_unexpected_error_is_one_line_with_how_to_see_the_traceback(tmp_path, capsys, monkeypatch):
    from distill import __main__ as cli

    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    monkeypatch.setattr(cli, "_main", lambda argv: {}["boom"])
    assert cli.main(["params"]) == 1
    line = first_error_line(capsys)
    assert line.startswith("error: KeyError: 'boom'") and cli.TRACEBACK_ENV in line
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(KeyError):
        cli.main(["params"])


def test_a_seed_numpy_cannot_take_is_refused_before_any_work(capsys):
    assert main(["validate", "params/smoke.yaml", "--set", "seed=4294967296"]) == 2
    line = first_error_line(capsys)
    assert "seed" in line and "4294967295" in line, line


def test_a_student_whose_weights_were_cut_short_is_found_before_any_work(tiny_paths, tmp_path, capsys):
    import shutil as sh

    folder = sh.copytree(tiny_paths[1], tmp_path / "student")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert main(["validate", "smoke", "--set", f"student={folder}"]) == 2
    line = first_error_line(capsys)
    assert "student" in line and "model.safetensors" in line and "cut short" in line, line
