import subprocess
import sys


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from iterdpo.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'LIGHT')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: iterdpo" in out and out.strip().endswith("LIGHT")


def test_import_is_light():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, iterdpo; print(sorted(m for m in ('torch','transformers','vllm','deepspeed','wandb') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert out.strip() == "[]"


def test_config_command_and_errors(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "iterdpo", "config", "train.beta=0.25"], capture_output=True, text=True)
    assert ok.returncode == 0 and "beta: 0.25" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("select:\n  corpus_fraction: 1.5\n")
    err = subprocess.run([sys.executable, "-m", "iterdpo", "config", "--config", str(bad)], capture_output=True, text=True)
    assert err.returncode == 2
    assert f"{bad}: select.corpus_fraction" in err.stderr


def test_stage_needs_iteration():
    err = subprocess.run([sys.executable, "-m", "iterdpo", "score"], capture_output=True, text=True)
    assert err.returncode == 2 and "--iteration" in err.stderr


def test_malformed_prompt_file_is_reported_with_file_line_field(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_bytes(b'{"prompt": "fine"}\n{"prompt": ""}\n')
    err = subprocess.run(
        [sys.executable, "-m", "iterdpo", "sample", "-k", "1", f"data.prompts={bad}", f"run.output_dir={tmp_path}"],
        capture_output=True, text=True,
    )
    assert err.returncode == 2
    assert f"{bad}: line 2, field 'prompt': empty prompt" in err.stderr
    assert "Traceback" not in err.stderr
