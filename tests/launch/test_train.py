"""launch/train.py end to end under real torchrun agents (gloo, CPU)."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from recis.distributed.plan import OPTIMIZER_STATE
from recis.io import SyntheticCriteoDataset
from recis.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "launch" / "train.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
CRITEO_SAMPLE = ROOT.parent / "shared" / "data" / "criteo_sample.txt"
# tensorboard is an optional extra: the launcher's --tensorboard is tested where it is installed.
TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
SMALL = ["--batch_size", "64", "--table_size", "1000", "--eval_batches", "2", "--log_steps", "2"]


def torchrun(agent_args, train_args, timeout=240):
    result = subprocess.run(
        [*TORCHRUN, *agent_args, str(TRAIN), *SMALL, *train_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def committed(output_dir):
    return (Path(output_dir) / "checkpoint").read_text().split()


def test_two_ranks_train_evaluate_checkpoint_and_resume_on_another_world_size(tmp_path):
    # DLRM (the default model) with another embedding dim than its default 16.
    out = str(tmp_path / "run")
    job = ["--output_dir", out, "--embedding_dim", "8"]
    two_ranks = ["--standalone", "--nproc_per_node=2"]
    first = ["--train_steps", "6", "--save_steps", "3", "--eval_every_steps", "3"]
    log = torchrun(two_ranks, [*job, *first, "--async_save", "true"])  # ckpt-3 in background
    assert "step 6/6" in log
    assert "evaluation at step 3: auc " in log
    assert log.count("evaluation at step 6") == 1  # not again after training
    assert committed(out) == ["ckpt-3", "ckpt-6"]

    log = torchrun(two_ranks, [*job, "--train_steps", "8", "--save_steps", "3"])
    assert "resumed from" in log and "at step 6" in log
    assert committed(out)[-1] == "ckpt-8"

    # The 2-rank checkpoint reshards onto 1 rank (row-wise now) and goes on.
    one_rank = ["--standalone", "--nproc_per_node=1"]
    log = torchrun(one_rank, [*job, "--train_steps", "9", "--sharding", "row_wise"])
    assert "at step 8" in log and "evaluation at step 9" in log


@pytest.mark.skipif(not CRITEO_SAMPLE.exists(), reason="needs ../shared/data/criteo_sample.txt")
def test_trains_on_real_criteo_rows(tmp_path):
    log = torchrun(
        ["--standalone", "--nproc_per_node=2"],
        [
            "--output_dir",
            str(tmp_path),
            "--model",
            "dcnv2",
            "--data",
            str(CRITEO_SAMPLE),
            "--eval_data",
            str(CRITEO_SAMPLE),
            "--train_epoch",
            "2",
            "--batch_size",
            "16",
            "--log_steps",
            "7",
            *(["--tensorboard", "true"] if TENSORBOARD else []),
        ],
    )
    assert "evaluation at step 14: auc " in log and ", count 200" in log
    # 100 rows a rank, 7 steps an epoch: the progress of epochs of a file by its bytes.
    assert "step 7 [50%]" in log and "step 14 [100%]" in log
    if TENSORBOARD:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "tensorboard"))
        events.Reload()
        assert [e.step for e in events.Scalars("train/loss")] == [7, 14]
        (auc,) = events.Scalars("eval/auc")
        assert auc.step == 14 and 0.0 <= auc.value <= 1.0


@pytest.mark.skipif(not CRITEO_SAMPLE.exists(), reason="needs ../shared/data/criteo_sample.txt")
def test_shuffled_real_rows_resume_mid_window_on_another_world_size(tmp_path):
    out = str(tmp_path / "run")
    data = ["--data", str(CRITEO_SAMPLE), "--batch_size", "16", "--shuffle_window", "3"]
    # 2 ranks stop after 4 batches each: inside their second window of 3.
    log = torchrun(
        ["--standalone", "--nproc_per_node=2"],
        [*data, "--output_dir", out, "--train_steps", "4", "--save_steps", "4"],
    )
    assert committed(out) == ["ckpt-4"]
    # 3 ranks read what the 2 had left of the epoch: 200 - 2 * 4 * 16 = 72 records,
    # 24 each, in 2 batches of 16 and 8.
    log = torchrun(
        ["--standalone", "--nproc_per_node=3"],
        [*data, "--output_dir", out, "--train_epoch", "1", "--sharding", "row_wise"],
    )
    assert "at step 4" in log and "step 6" in log and "step 7" not in log


def test_two_torchrun_agents_form_one_two_node_job(tmp_path):
    port = free_port()
    agent = [
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        "--rdzv_id=recis-two-nodes",
    ]
    train = [
        *TORCHRUN,
        *agent,
        str(TRAIN),
        *SMALL,
        "--output_dir",
        str(tmp_path),
        "--train_steps",
        "4",
        "--model",
        "deepfm",
        "--sharding",
        "table_row_wise",
    ]
    nodes = [
        subprocess.Popen(
            train, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    logs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert any("step 4/4" in log for log in logs)
    assert committed(tmp_path) == ["ckpt-4"]


def load_train_module():
    spec = importlib.util.spec_from_file_location("recis_launch_train", TRAIN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_every_option_is_described_by_its_dataclass_docstring():
    train = load_train_module()
    options = {
        a.option_strings[0][2:]: a for a in train.build_parser()._actions if a.dest != "help"
    }
    fields = [
        *train.dataclasses.fields(train.TrainingArguments),
        *train.dataclasses.fields(train.RunConfig),
    ]
    assert sorted(options) == sorted(f.name for f in fields)
    descriptions = set()
    for name, action in options.items():
        description, default = action.help.rsplit(" (default: ", 1)
        assert len(description) > 20 and "``" not in description, (name, action.help)
        assert default == f"{action.default})", name
        descriptions.add(description)
    assert len(descriptions) == len(options)  # each option says what it alone does
    assert options["output_dir"].help.startswith("where checkpoints are written")
    assert "recis.hooks.LoggerHook prints" in options["log_steps"].help
    assert options["model"].metavar == "{dlrm,deepfm,dcnv2}"


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "adagrad", "adam", "adamw", "sgd"])
def test_the_plan_counts_the_state_of_the_chosen_sparse_optimizer(optimizer):
    train = load_train_module()
    model = train.build_model(train.RunConfig(sparse_optimizer=optimizer, table_size=100), "cpu")
    assert model.plan.optimizer == train.PLANNER_OPTIMIZER.get(optimizer, optimizer)
    assert set(train.SPARSE_OPTIMIZERS) <= {*OPTIMIZER_STATE, *train.PLANNER_OPTIMIZER}


def test_command_line_covers_training_arguments_and_rejects_bad_values(capsys):
    train = load_train_module()
    args, run = train.parse_args(
        ["--train_steps", "7", "--save_steps", "none", "--model", "deepfm", "--bf16", "true"]
    )
    assert (args.train_steps, args.save_steps, args.bf16, run.model) == (7, None, True, "deepfm")
    # Each optimizer has a default rate of its own (Adam's step does not shrink with
    # the gradient, plain SGD's is the gradient's).
    rates = {
        name: train.parse_args(["--sparse_optimizer", name])[1].sparse_lr
        for name in ("adam", "adamw", "adagrad", "rowwise_adagrad", "sgd")
    }
    assert rates == {
        "adam": 1e-3,
        "adamw": 1e-3,
        "adagrad": 0.05,
        "rowwise_adagrad": 0.05,
        "sgd": 0.5,
    }
    assert (
        train.parse_args(["--sparse_optimizer", "adam", "--sparse_lr", "0.01"])[1].sparse_lr == 0.01
    )
    args, _ = train.parse_args(["--save_on_sigterm", "No", "--bf16", "0"])
    assert (args.save_on_sigterm, args.bf16) == (False, False)
    assert args.train_steps == train.SYNTHETIC_DEFAULT_STEPS  # synthetic data never ends
    # Real data: both datasets skip malformed records when asked to.
    _, run = train.parse_args(
        ["--data", str(CRITEO_SAMPLE), "--eval_data", str(CRITEO_SAMPLE), "--skip_malformed", "1"]
    )
    datasets = train.build_datasets(run, seed=0)
    assert [ds.skip_malformed for ds in datasets] == [True, True]
    _, run = train.parse_args(["--data", str(CRITEO_SAMPLE)])
    assert train.build_datasets(run, seed=0)[0].skip_malformed is False
    # Synthetic evaluation: the default with synthetic data, on request with any data.
    for argv in ([], ["--data", str(CRITEO_SAMPLE), "--eval_data", "synthetic"]):
        _, run = train.parse_args([*argv, "--eval_batches", "3"])
        evaluation = train.build_datasets(run, seed=0)[1]
        assert isinstance(evaluation, SyntheticCriteoDataset) and len(list(evaluation)) == 3
    # A model bank: a JSON list, one JSON entry, or a checkpoint path alone.
    entry = {"path": "memory://bank/dcn", "exclude": ["io_state"]}
    for text in (f"[{json.dumps(entry)}]", json.dumps(entry)):
        assert train.parse_args(["--model_bank", text])[0].model_bank == [entry]
    assert train.parse_args(["--model_bank", "/ckpt/old"])[0].model_bank == [{"path": "/ckpt/old"}]
    # A data path that is not there names its option.
    for option in ("--data", "--eval_data"):
        _, run = train.parse_args([option, "/no/such/criteo"])
        with pytest.raises(ValueError, match=f"^{option}: no such file or directory"):
            train.build_datasets(run, seed=0)
    # A bad value is a usage error (exit status 2, the message on stderr), no traceback.
    for argv, message in [
        (["--model", "nope"], "--model must be one of"),
        (["--sharding", "diagonal"], "--sharding must be auto or one of"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps"),
        (["--save_steps", "0"], "save_steps must be None or an int >= 1, got 0"),
        (["--threads_per_rank", "0"], "--threads_per_rank must be >= 1, got 0"),
        (["--save_on_sigterm", "flase"], "expected true or false, got 'flase'"),
        (["--batch_size", "1.5"], "--batch_size: expected an integer, got '1.5'"),
        (["--train_steps", "x"], "--train_steps: expected an integer or none, got 'x'"),
        (["--dense_lr", "fast"], "--dense_lr: expected a number, got 'fast'"),
        (["--sparse_lr", "fast"], "--sparse_lr: expected a number or none, got 'fast'"),
        (["--model_bank", "[oops"], "--model_bank: expected JSON or a checkpoint path or none"),
        (["--eval_every_steps", "0"], "eval_every_steps must be None or an int >= 1"),
        (["--train_epoch", "1"], "synthetic data never ends: give --train_steps"),
        (
            ["--data", str(CRITEO_SAMPLE), "--eval_every_steps", "5"],
            "--eval_every_steps needs --eval_data",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_:
            train.parse_args(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "error: " in err and message in err and "Traceback" not in err


@pytest.mark.skipif(not CRITEO_SAMPLE.exists(), reason="needs ../shared/data/criteo_sample.txt")
def test_eval_data_among_the_training_files_is_said_not_to_be_held_out(tmp_path, caplog):
    train = load_train_module()
    (tmp_path / "day_0.csv").write_bytes(CRITEO_SAMPLE.read_bytes())
    (tmp_path / "day_1.csv").write_bytes(CRITEO_SAMPLE.read_bytes())
    _, run = train.parse_args(["--data", str(tmp_path), "--eval_data", str(tmp_path / "day_1.csv")])
    with caplog.at_level("WARNING"):
        train.build_datasets(run, seed=0)
    assert (
        f"--eval_data shares 1 file(s) with --data ({tmp_path / 'day_1.csv'}): its metrics "
        "are not those of held-out data"
    ) in caplog.text
    caplog.clear()
    _, run = train.parse_args(
        ["--data", str(tmp_path / "day_0.csv"), "--eval_data", str(tmp_path / "day_1.csv")]
    )
    with caplog.at_level("WARNING"):
        train.build_datasets(run, seed=0)
    assert "shares" not in caplog.text


def test_tensorboard_without_its_package_is_a_usage_error(monkeypatch, capsys):
    train = load_train_module()
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else find_spec(name, *a),
    )
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--tensorboard", "true"])
    assert exit_.value.code == 2
    assert "--tensorboard true needs the tensorboard package: pip install tensorboard" in (
        capsys.readouterr().err
    )


def signal_once_training(
    command: list[str], line: str, signum: int = signal.SIGTERM, whole_group: bool = False
) -> tuple[int, str]:
    """Runs ``command``, sends it ``signum`` once it printed ``line``; (exit code, output).

    ``whole_group``: to every process of the command, as a terminal sends Ctrl-C.
    """
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=whole_group,
    )
    lines: list[str] = []
    training = threading.Event()

    def read() -> None:
        for text in process.stdout:
            lines.append(text)
            if line in text:
                training.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert training.wait(180), "".join(lines)[-3000:]
        if whole_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        process.wait(120)
    finally:
        process.kill()
    reader.join(10)
    return process.returncode, "".join(lines)


def test_sigterm_to_torchrun_checkpoints_the_job_which_then_resumes(tmp_path):
    # What Slurm (preemption, time limit) and Kubernetes (eviction) do: SIGTERM to the
    # agent, which passes it on to its workers and gives them 30 s before SIGKILL.
    out = str(tmp_path / "run")
    job = ["--output_dir", out, "--save_steps", "100000"]
    command = [*TORCHRUN, "--standalone", "--nproc_per_node=2", str(TRAIN), *SMALL, *job]
    returncode, log = signal_once_training([*command, "--train_steps", "100000"], "step 4/")
    assert returncode != 0  # torchrun reports the signal it got
    stops = re.findall(r"SIGTERM: saving a checkpoint at step (\d+) and stopping", log)
    assert len(stops) == 1 and int(stops[0]) >= 4, log[-3000:]
    assert committed(out) == [f"ckpt-{stops[0]}"]
    step = int(stops[0])
    log = torchrun(["--standalone", "--nproc_per_node=2"], [*job, "--train_steps", f"{step + 2}"])
    assert f"at step {step}" in log and f"step {step + 2}/{step + 2}" in log


def test_a_job_stopped_by_sigterm_exits_as_if_killed_by_it(tmp_path):
    # 128 + 15, which schedulers retry; 0 would mark the unfinished job as succeeded.
    command = [sys.executable, str(TRAIN), *SMALL, "--output_dir", str(tmp_path)]
    returncode, log = signal_once_training([*command, "--train_steps", "100000"], "step 2/")
    assert returncode == 143, log[-3000:]
    assert "evaluation at step" not in log and len(committed(tmp_path)) == 1


def test_ctrl_c_stops_every_rank_with_one_line_saying_which_checkpoint_resumes(tmp_path):
    # A terminal's Ctrl-C reaches torchrun and every worker, and torchrun passes it on.
    out = str(tmp_path)
    job = ["--output_dir", out, "--save_steps", "2", "--train_steps", "100000"]
    command = [*TORCHRUN, "--standalone", "--nproc_per_node=2", str(TRAIN), *SMALL, *job]
    returncode, log = signal_once_training(command, "step 4/", signal.SIGINT, whole_group=True)
    assert returncode != 0
    said = re.findall(r"interrupted at step \d+; the newest checkpoint is (\S+): running", log)
    assert said == [str(Path(out) / committed(out)[-1])], log[-3000:]
    assert "KeyboardInterrupt" not in log, log[-3000:]  # no traceback from each rank


def test_an_interrupted_job_exits_as_if_killed_by_sigint(tmp_path):
    command = [sys.executable, str(TRAIN), *SMALL, "--output_dir", str(tmp_path)]
    returncode, log = signal_once_training(
        [*command, "--train_steps", "100000"], "step 2/", signal.SIGINT
    )
    assert returncode == 128 + signal.SIGINT and "Traceback" not in log, log[-3000:]
    assert "interrupted at step" in log


def test_ctrl_c_while_setting_up_says_nothing_was_written(tmp_path, monkeypatch, caplog):
    # Building a big model takes minutes: a Ctrl-C there gets a line too.
    train = load_train_module()

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(train, "build_model", interrupted)
    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        train.main([*SMALL, "--output_dir", str(tmp_path / "run")])
    assert f"interrupted before training: nothing was written to {tmp_path / 'run'}" in (
        caplog.text
    )
    assert not (tmp_path / "run").exists()


def test_the_command_line_rates_hold_after_a_restore(caplog):
    # The launcher has no LR schedule: a resumed job trains with the rates it is given.
    train = load_train_module()
    dense = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.002)
    dense.param_groups[0]["lr"] = 0.001  # as restored from a checkpoint
    rates = train.CommandLineRates({"--dense_lr": (dense, 0.002)})
    with caplog.at_level("INFO"):
        rates.before_train()
    assert dense.param_groups[0]["lr"] == 0.002
    assert "--dense_lr 0.002 replaces the checkpoint's 0.001" in caplog.text
    caplog.clear()
    rates.before_train()  # nothing to replace: no line
    assert "replaces" not in caplog.text
