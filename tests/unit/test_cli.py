"""The `carve` command (carve.pipeline.cli): help, init on tiny nnU-Net/MSD/plain folders, run/predict command
lines with
Snakemake dry runs, verify, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import job_stats

import carve
from carve.pipeline import cli
from carve.pipeline.provenance import write_manifest
from carve.pipeline.run_config import RESERVED_LABEL_NAMES
from carve.pipeline.sheet import load_sheet
from carve.planning.plan import PLANS_VERSION
from carve.prediction.bundle import write_bundle

REPO = Path(__file__).resolve().parents[2]


def carve_cmd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real command, as the console script runs it."""
    return subprocess.run([sys.executable, "-m", "carve.pipeline.cli", *args], capture_output=True, text=True, cwd=cwd)


def nifti(path: Path, values: np.ndarray | None = None, shape: tuple[int, ...] = (6, 7, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros(shape, np.uint8) if values is None else values.astype(np.uint8)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.2, 1.5, 1.0])), str(path))
    return path


def label(values: tuple[int, ...], shape: tuple[int, int, int] = (6, 7, 8)) -> np.ndarray:
    data = np.zeros(shape, np.uint8)
    for i, v in enumerate(values):
        data[i + 1, 2:4, 2:4] = v
    return data


def nnunet(root: Path, cases: tuple[str, ...] = ("a", "b", "c"), channels: int = 1, test: tuple[str, ...] = ()) -> Path:
    for case in cases:
        for k in range(channels):
            nifti(root / "imagesTr" / f"{case}_{k:04d}.nii.gz")
        nifti(root / "labelsTr" / f"{case}.nii.gz", label((1, 2)))
    for case in test:
        for k in range(channels):
            nifti(root / "imagesTs" / f"{case}_{k:04d}.nii.gz")
    return root


def msd(root: Path, cases: tuple[str, ...] = ("x_001", "x_002", "x_003")) -> Path:
    for case in cases:
        nifti(root / "imagesTr" / f"{case}.nii.gz")
        nifti(root / "labelsTr" / f"{case}.nii.gz", label((1, 2)))
    (root / "imagesTr" / f"._{cases[0]}.nii.gz").write_bytes(b"macOS resource fork")  # as in the MSD tarballs
    return root


def plain(root: Path, values: dict[str, tuple[int, ...]]) -> Path:
    for case, vals in values.items():
        nifti(root / "images" / f"{case}.nii.gz")
        nifti(root / "labels" / f"{case}.nii.gz", label(vals))
    return root


def init(tmp_path: Path, folder: Path, *options: str) -> tuple[dict, list[list[str]]]:
    """Run `carve init` in tmp_path; the written config and sheet rows."""
    assert cli.main(["init", str(folder), *options]) == 0
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    rows = [line.split("\t") for line in (tmp_path / "cases.tsv").read_text().splitlines()]
    return config, rows


# ---------------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "verb, expected",
    [
        ((), "run the workflow"),
        (("run",), "--configfile FILE"),
        (("predict",), "--rtstruct"),
        (("verify",), "MANIFEST"),
        (("init",), "nnU-Net   imagesTr/CASE_0000.nii.gz"),
    ],
)
def test_every_verb_has_help(verb, expected):
    done = carve_cmd(*verb, "--help")
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout and done.stdout.startswith("usage: carve")


def test_version():
    done = carve_cmd("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"carve {carve.__version__}"


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "carve"
    assert script.is_file(), f"{script}: run `pip install --no-deps --no-build-isolation -e .` (make setup)"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and carve.__version__ in done.stdout


# ---------------------------------------------------------------------------------------------------- init


def test_init_nnunet_with_dataset_json(tmp_path, monkeypatch):
    root = nnunet(tmp_path / "Dataset001", test=("t1",))
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "left kidney": 1, "tumour": 2}})
    )
    monkeypatch.chdir(tmp_path)
    config, rows = init(tmp_path, root)
    assert config["labels"] == {1: "left_kidney", 2: "tumour"}
    assert config["modality"] == "CT" and config["folds"] == 3 and "channels" not in config
    assert config["cases"] == "cases.tsv" and config["results"] == "results/Dataset001"
    assert rows[0] == ["case", "image", "label", "role"]
    assert rows[1] == ["a", "Dataset001/imagesTr/a_0000.nii.gz", "Dataset001/labelsTr/a.nii.gz", "train"]
    assert rows[4] == ["t1", "Dataset001/imagesTs/t1_0000.nii.gz", "", "test"]
    cases = load_sheet(tmp_path / "cases.tsv")
    assert [(c.case, c.role) for c in cases] == [("a", "train"), ("b", "train"), ("c", "train"), ("t1", "test")]


def test_init_nnunet_two_channels(tmp_path, monkeypatch):
    root = nnunet(tmp_path / "ds", cases=("p1", "p2"), channels=2)
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"1": "ADC", "0": "T2"}, "labels": {"background": 0, "zone": 1}})
    )
    monkeypatch.chdir(tmp_path)
    config, rows = init(tmp_path, root)
    assert config["channels"] == [{"name": "T2", "modality": "MR"}, {"name": "ADC", "modality": "MR"}]
    assert rows[0] == ["case", "image", "label", "role", "image_T2", "image_ADC"]
    assert rows[1][4:] == ["ds/imagesTr/p1_0000.nii.gz", "ds/imagesTr/p1_0001.nii.gz"]
    cases = load_sheet(tmp_path / "cases.tsv", ["T2", "ADC"])
    assert cases[0].channel_images == (root / "imagesTr" / "p1_0000.nii.gz", root / "imagesTr" / "p1_0001.nii.gz")


def test_init_msd_with_old_dataset_json(tmp_path, monkeypatch):
    root = msd(tmp_path / "Task04")
    (root / "dataset.json").write_text(
        json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}})
    )
    monkeypatch.chdir(tmp_path)
    config, rows = init(tmp_path, root)
    assert config["labels"] == {1: "Anterior", 2: "Posterior"} and config["modality"] == "MR"
    assert [r[0] for r in rows[1:]] == ["x_001", "x_002", "x_003"]  # the ._ file is skipped
    assert rows[2][1:] == ["Task04/imagesTr/x_002.nii.gz", "Task04/labelsTr/x_002.nii.gz", "train"]


def test_init_plain_reads_label_values(tmp_path, monkeypatch, capsys):
    root = plain(tmp_path / "data", {"s1": (1,), "s2": (3,), "s3": (1, 3)})
    monkeypatch.chdir(tmp_path)
    config, rows = init(tmp_path, root, "--modality", "CT", "--results", "out/plain")
    assert config["labels"] == {1: "label_1", 3: "label_3"}
    assert config["modality"] == "CT" and config["results"] == "out/plain"
    assert "rename them" in capsys.readouterr().err
    assert len(rows) == 4 and all(r[3] == "train" for r in rows[1:])


def test_init_renames_a_label_called_foreground(tmp_path, monkeypatch):
    root = msd(tmp_path / "Task09")
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "Foreground"}}))
    monkeypatch.chdir(tmp_path)
    config, _ = init(tmp_path, root)
    assert config["labels"] == {1: "Foreground_label"}  # "foreground" is the mean over labels in every table
    assert "foreground_label" not in RESERVED_LABEL_NAMES


def test_init_labels_option_wins_and_names_stay_strings(tmp_path, monkeypatch):
    root = msd(tmp_path / "d")
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}))
    monkeypatch.chdir(tmp_path)
    config, _ = init(tmp_path, root, "--labels", "1=on,2=12")
    assert config["labels"] == {1: "on", 2: "12"}  # quoted: YAML would read on as true, 12 as a number


def test_init_writes_beside_the_config_with_absolute_paths_outside(tmp_path, monkeypatch):
    root = msd(tmp_path / "data" / "d")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli.main(["init", str(root), "-o", "proj/my.yaml"]) == 0
    config = yaml.safe_load((work / "proj" / "my.yaml").read_text())
    assert config["cases"] == "proj/cases.tsv"
    row = (work / "proj" / "cases.tsv").read_text().splitlines()[1].split("\t")
    assert row[1] == str(root / "imagesTr" / "x_001.nii.gz")


def test_init_dry_run_of_the_written_configs(tmp_path, monkeypatch):
    """The written configs pass the workflow's validation: Snakemake dry runs list every case."""
    root = nnunet(tmp_path / "ds", cases=("p1", "p2", "p3"), channels=2, test=("n1",))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", str(root)]) == 0
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["channels"][1]["name"] == "ch1"
    done = carve_cmd("run", "--configfile", "config.yaml", "--", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = job_stats(done.stdout + done.stderr)
    assert jobs["convert_image"] == 4 and jobs["convert_label"] == 3 and jobs["train_fold"] == 3
    assert jobs["predict"] == 1 and jobs["predict_cv"] == 3


def test_init_plain_config_dry_run_with_unknown_option(tmp_path, monkeypatch):
    root = plain(tmp_path / "data", {"s1": (1,), "s2": (2,)})
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", str(root), "--labels", "1=liver,2=spleen"]) == 0
    # a Snakemake option after the known ones, without `--`
    done = carve_cmd("run", "--configfile", "config.yaml", "--cores", "1", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert job_stats(done.stdout + done.stderr)["train_fold"] == 2
    assert "--cores 1 --dry-run" in done.stderr  # carve prints the command it runs


@pytest.mark.parametrize(
    "make, option, message",
    [
        (lambda r: (nnunet(r), (r / "labelsTr" / "b.nii.gz").unlink()), (), "imagesTr/b_0000.nii.gz has no label"),
        (lambda r: (msd(r), (r / "labelsTr" / "x_002.nii.gz").unlink()), (), "imagesTr/x_002.nii.gz has no label"),
        (lambda r: (plain(r, {"a": (1,), "b": (1,)}), nifti(r / "labels" / "z.nii.gz")), (), "z.nii.gz is a label"),
        (lambda r: r.mkdir(), (), "no imagesTr/ (nnU-Net or Medical"),
        (lambda r: (r / "imagesTr").mkdir(parents=True), (), "labelsTr: not found"),
        (lambda r: ((r / "imagesTr").mkdir(parents=True), (r / "labelsTr").mkdir()), (), "imagesTr: no image files"),
        (lambda r: (nnunet(r), nifti(r / "imagesTr" / "a_0002.nii.gz")), (), "channels 0000, 0002"),
        (lambda r: (msd(r), nifti(r / "imagesTr" / "bad id.nii.gz")), (), "bad id.nii.gz: case id 'bad id'"),
        (lambda r: plain(r, {"a": (1,), "b": (1,)}), ("--labels", "1:x"), "'1:x' is not VALUE=NAME"),
        (lambda r: plain(r, {"a": (0,), "b": (0,)}), (), "hold no value above 0"),
        (lambda r: plain(r, {"a": (1,)}), (), "1 labelled training case(s)"),
        (
            lambda r: (nnunet(r), (r / "dataset.json").write_text('{"labels": {"background": 0, "wt": [1, 2]}}')),
            (),
            "label 'wt' is a region [1, 2]",
        ),
    ],
)
def test_init_refuses_with_one_line(tmp_path, monkeypatch, capsys, make, option, message):
    root = tmp_path / "d"
    make(root)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", str(root), *option]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("carve: error: ") and message in err[-1], err
    assert not (tmp_path / "config.yaml").exists()


def test_init_refuses_to_overwrite_unless_forced(tmp_path, monkeypatch, capsys):
    root = msd(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cases.tsv").write_text("mine\n")
    assert cli.main(["init", str(root)]) == 2
    assert "cases.tsv exists; give --force" in capsys.readouterr().err
    assert (tmp_path / "cases.tsv").read_text() == "mine\n"
    assert cli.main(["init", str(root), "--force"]) == 0
    assert (tmp_path / "cases.tsv").read_text().startswith("case\timage")


def test_verbose_keeps_the_traceback(tmp_path):
    quiet = carve_cmd("init", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == [f"carve: error: {tmp_path}/nowhere: not a folder"]
    loud = carve_cmd("init", str(tmp_path / "nowhere"), "--verbose", cwd=tmp_path)
    assert loud.returncode == 2 and "Traceback" in loud.stderr and "in init_files" in loud.stderr


def test_unknown_options_are_refused_outside_run_and_predict(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["verify", "m.json", "--dry-run"])
    assert exit_.value.code == 2 and "unrecognized arguments: --dry-run" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- run


def run_args(*argv: str) -> tuple[list[str], list[str]]:
    own, extra = cli.split_extra(argv)
    args, unknown = cli.build_parser().parse_known_args(own)
    return cli.run_command(args, [*unknown, *extra]), unknown


def test_run_command_line(tmp_path, monkeypatch):
    (tmp_path / "my.yaml").write_text("cases: x\n")
    monkeypatch.chdir(tmp_path)
    cmd, unknown = run_args("run", "--configfile", "my.yaml", "--config", "folds=3", "--", "--dry-run", "-p")
    assert cmd[:3] == [sys.executable, "-m", "snakemake"]
    assert cmd[cmd.index("--snakefile") + 1] == str(REPO / "Snakefile")
    assert cmd[cmd.index("--directory") + 1] == str(tmp_path)
    assert cmd[cmd.index("--configfile") + 1] == str(tmp_path / "my.yaml")  # absolute
    assert cmd[cmd.index("--cores") + 1] == "all"
    assert unknown == ["--config", "folds=3"]  # Snakemake's --config is not taken for --configfile
    assert cmd[-4:] == ["--config", "folds=3", "--dry-run", "-p"]


def test_run_profile_by_name_and_cores(tmp_path, monkeypatch):
    (tmp_path / "my.yaml").write_text("cases: x\n")
    monkeypatch.chdir(tmp_path)
    cmd, _ = run_args("run", "--profile", "workstation", "--configfile", "my.yaml")
    assert cmd[cmd.index("--workflow-profile") + 1] == str(REPO / "profiles" / "workstation")
    assert "--cores" not in cmd  # the profile sets them
    cmd, _ = run_args("run", "--profile", "workstation", "--configfile", "my.yaml", "-c", "3")
    assert cmd[cmd.index("--cores") + 1] == "3"
    cmd, _ = run_args("run", "--configfile", "my.yaml", "--", "-j4")
    assert "--cores" not in cmd and cmd[-1] == "-j4"


@pytest.mark.parametrize(
    "argv, message",
    [
        (("run", "--profile", "nosuch", "--configfile", "my.yaml"), "one of slurm, slurm-local, workstation"),
        (("run", "--configfile", "gone.yaml"), "--configfile gone.yaml: file not found"),
        (("run",), "give --configfile (no config/config.yaml in"),
        (("run", "--configfile", "my.yaml", "-d", "nodir"), "--directory nodir: not a folder"),
    ],
)
def test_run_errors(tmp_path, monkeypatch, capsys, argv, message):
    (tmp_path / "my.yaml").write_text("cases: x\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(list(argv)) == 2
    assert message in capsys.readouterr().err


def test_run_without_the_snakefile(tmp_path, monkeypatch, capsys):
    (tmp_path / "my.yaml").write_text("cases: x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "SNAKEFILE", tmp_path / "site-packages" / "Snakefile")
    assert cli.main(["run", "--configfile", "my.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the carve workflow is not beside the installed package" in err[0]


def test_bad_cores_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--cores", "0"])
    assert "not a positive number of cores or 'all'" in capsys.readouterr().err


def test_snakemake_exit_code_is_returned(tmp_path, monkeypatch):
    (tmp_path / "bad.yaml").write_text("cases: nowhere.tsv\nnot_a_key: 1\nlabels: {1: a}\n")
    done = carve_cmd("run", "--configfile", "bad.yaml", "--", "--dry-run", cwd=tmp_path)
    assert done.returncode == 1 and "not_a_key" in done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------------- predict


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A bundle that passes every check of load_bundle (its weights are not real: dry runs only)."""
    src = tmp_path / "trained"
    src.mkdir()
    plans = {"plans_version": PLANS_VERSION, "labels": {"1": "organ"}, "channels": [{"name": "image"}]}
    (src / "plans.json").write_text(json.dumps(plans))
    (src / "postprocessing.json").write_text("{}")
    (src / "members.json").write_text('{"keep": false}')
    models = [src / "m0.pt", src / "m1.pt"]
    for i, m in enumerate(models):
        m.write_bytes(bytes([i]) * 8)
    return write_bundle(
        tmp_path / "bundle", src / "plans.json", models, src / "postprocessing.json", {}, src / "members.json"
    )


def dicom_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    for i in range(3):
        (path / f"IM{i}").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)  # found by the magic, not the name
    return path


def test_predict_dicom_series_dry_run(tmp_path, bundle):
    series = dicom_folder(tmp_path / "CT_head")
    out = tmp_path / "out"
    options = ("-b", str(bundle), "-i", str(series), "-o", "out", "--rtstruct", "--device", "cpu")
    done = carve_cmd("predict", *options, "--", "-n", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = job_stats(done.stdout + done.stderr)
    assert jobs["convert_image"] == 1 and jobs["predict"] == 1 and jobs["export_mesh"] == 1
    assert jobs["export_dicom_seg"] == 1 and jobs["export_rtstruct"] == 1
    assert not {"train_fold", "plan", "convert_label"} & set(jobs)
    work = out / "logs" / "carve"
    config = yaml.safe_load((work / "config.yaml").read_text())
    assert config == {
        "bundle": str(bundle),
        "cases": str(work / "cases.tsv"),
        "results": str(out),
        "device": "cpu",
        "dicom": {"rtstruct": True},
    }
    assert (work / "cases.tsv").read_text() == f"case\timage\tlabel\trole\nCT_head\t{series}\t\ttest\n"
    assert (work / ".snakemake").is_dir() and not (out / ".snakemake").exists()  # out of the manifest's reach
    assert f"{out}/dicom/CT_head/segmentation.seg.dcm" in done.stdout + done.stderr


def test_predict_one_nifti_command(tmp_path, bundle, monkeypatch):
    scan = nifti(tmp_path / "in" / "new_01.nii.gz")
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["predict", "-b", str(bundle), "-i", "in/new_01.nii.gz", "-o", "o", "-c", "2"])
    cmd = cli.prepare_predict(args, ["--dry-run"])
    work = tmp_path / "o" / "logs" / "carve"
    assert cmd[cmd.index("--directory") + 1] == str(work)
    assert cmd[cmd.index("--configfile") + 1] == str(work / "config.yaml")
    assert cmd[cmd.index("--cores") + 1] == "2" and cmd[-2:] == ["--rerun-incomplete", "--dry-run"]
    config = yaml.safe_load((work / "config.yaml").read_text())
    assert config == {"bundle": str(bundle), "cases": str(work / "cases.tsv"), "results": str(tmp_path / "o")}
    assert (work / "cases.tsv").read_text() == f"case\timage\tlabel\trole\nnew_01\t{scan}\t\ttest\n"
    before = (work / "config.yaml").stat().st_mtime_ns
    cli.prepare_predict(args, [])
    assert (work / "config.yaml").stat().st_mtime_ns == before  # unchanged: Snakemake sees no newer input


def test_predict_cases_by_input_kind(tmp_path):
    work = tmp_path / "out" / "logs" / "carve"
    work.mkdir(parents=True)
    scans = tmp_path / "scans"
    nifti(scans / "a.nii.gz")
    dicom_folder(scans / "b")
    assert cli.predict_cases(scans, work, tmp_path / "out") == scans  # a folder of scans as it is
    assert cli.predict_cases(scans / "b", work, tmp_path / "out") == work / "cases.tsv"  # one DICOM series
    assert "\nb\t" in (work / "cases.tsv").read_text()
    sheet = tmp_path / "new.tsv"
    sheet.write_text("case\timage\tlabel\trole\n")
    assert cli.predict_cases(sheet, work, tmp_path / "out") == sheet
    with pytest.raises(cli.CarveError, match="inside the scans folder"):
        cli.predict_cases(scans, work, scans / "out")
    with pytest.raises(cli.CarveError, match="not an image file"):
        cli.predict_cases(dicom_folder(tmp_path / "s") / "IM0", work, tmp_path / "out")
    with pytest.raises(cli.CarveError, match="case id 'a b'"):
        cli.predict_cases(nifti(tmp_path / "a b.nii.gz"), work, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(cli.CarveError, match="no image files or DICOM folders"):
        cli.predict_cases(tmp_path / "empty", work, tmp_path / "out")


def test_predict_refuses_a_damaged_bundle_before_snakemake(tmp_path, bundle, capsys):
    (bundle / "folds" / "fold_1.pt").write_bytes(b"altered")
    scan = nifti(tmp_path / "a.nii.gz")
    assert cli.main(["predict", "-b", str(bundle), "-i", str(scan), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"carve: error: bundle {bundle}: folds/fold_1.pt differs from its sha256 in bundle.json (altered or corrupt)"
    ]  # noqa: E501
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- verify


@pytest.fixture
def manifest(tmp_path) -> Path:
    results = tmp_path / "results"
    (results / "predictions").mkdir(parents=True)
    (results / "predictions" / "a.nii.gz").write_bytes(b"prediction")
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"scan")
    code = tmp_path / "code"
    code.mkdir()
    (code / "Snakefile").write_text("rule all:\n")
    return write_manifest(results, {"results": "results"}, [scan], results / "manifest.json", code_root=code)


def test_verify_ok_and_drift(manifest, capsys):
    assert cli.main(["verify", str(manifest)]) == 0
    assert capsys.readouterr().out.strip().endswith("ok, 1 inputs and 1 outputs as recorded")
    (manifest.parent / "predictions" / "a.nii.gz").write_bytes(b"changed")
    assert cli.main(["verify", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert "changed  output predictions/a.nii.gz" in out and "1 file(s) drifted" in out


def test_verify_results_folder_elsewhere(manifest, tmp_path, capsys):
    moved = tmp_path / "moved"
    manifest.parent.rename(moved)
    copy = tmp_path / "manifest_copy.json"
    copy.write_text((moved / "manifest.json").read_text())
    assert cli.main(["verify", str(copy), "--results", str(moved)]) == 0
    assert cli.main(["verify", str(copy)]) == 1  # beside the copy, the outputs are missing
    assert "missing  output predictions/a.nii.gz" in capsys.readouterr().out


def test_verify_against_another_run_names_the_first_difference(manifest, tmp_path, capsys):
    import json

    other = json.loads(manifest.read_text())
    other["config"]["seed"] = 3
    other["training"] = {"plan": {"iterations": 600}, "models": {}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert cli.main(["verify", str(manifest), "--against", str(tmp_path / "other.json")]) == 1
    out = capsys.readouterr().out
    assert out.startswith("first difference: config   seed: absent | 3") and "training plan.iterations" in out
    assert cli.main(["verify", str(manifest), "--against", str(manifest)]) == 0


def test_verify_not_a_manifest(tmp_path, capsys):
    (tmp_path / "m.json").write_text("{}")
    assert cli.main(["verify", str(tmp_path / "m.json")]) == 2
    expected = f"carve: error: {tmp_path}/m.json: not a carve manifest (format carve-manifest/1 expected)"
    assert capsys.readouterr().err.strip() == expected
