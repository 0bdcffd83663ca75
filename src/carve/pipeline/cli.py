"""The `carve` command: run the workflow, predict with a trained bundle, verify a run, start a config.

    carve init data/Task04_Hippocampus -o my.yaml      # cases sheet + starting config from an nnU-Net/MSD folder
    carve run --configfile my.yaml --cores 8           # train, cross-validate, evaluate, export (Snakemake)
    carve predict -b results/x/bundle -i scans/ -o out/  # inference only
    carve verify results/x/manifest.json               # re-hash a run against its manifest
    carve verify a/manifest.json --against b/manifest.json   # why two runs differ

`run` and `predict` start Snakemake (``python -m snakemake``, this interpreter) on the repository's Snakefile;
options they do not know, and everything after ``--``, go to Snakemake as they are.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import carve
from carve.errors import CarveError

REPO = Path(__file__).resolve().parents[3]  # src/carve/pipeline/cli.py -> the repository (editable install)
SNAKEFILE = REPO / "Snakefile"
PROFILES = REPO / "profiles"
PREDICT_WORK = Path("logs") / "carve"  # below OUT: the provenance manifest does not record logs/
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
CORES_FLAGS = ("--cores", "-c", "--jobs", "-j")


# ---------------------------------------------------------------------------------------------------- helpers


def snakefile() -> Path:
    """The workflow's Snakefile beside the package; an error when carve is not installed from its repository."""
    if not SNAKEFILE.is_file() or not (REPO / "rules").is_dir():
        raise CarveError(
            f"the carve workflow is not beside the installed package (no {SNAKEFILE}); carve run and carve predict "
            "need an editable install from the repository: `pip install -e .` in a checkout"
        )
    return SNAKEFILE


def resolve_profile(value: str) -> Path:
    """A profile folder: a path to one, or the name of one in the repository's profiles/."""
    given = Path(value).expanduser()
    if given.is_dir():
        return given.resolve()
    named = PROFILES / value
    if os.sep not in value and (named / "config.yaml").is_file():
        return named
    known = sorted(p.name for p in PROFILES.glob("*") if (p / "config.yaml").is_file()) if PROFILES.is_dir() else []
    raise CarveError(f"profile '{value}': neither a folder nor one of {', '.join(known) or 'none'} ({PROFILES})")


def check_cores(value: str) -> str:
    if value == "all" or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"'{value}' is not a positive number of cores or 'all'")


def gives_cores(extra: Sequence[str]) -> bool:
    """Whether the Snakemake options name the cores or jobs themselves (``--cores 4``, ``-j4``, ``--jobs=2``)."""
    return any(a in CORES_FLAGS or a.startswith(("--cores=", "--jobs=")) or a[:2] in ("-c", "-j") for a in extra)


def snakemake_command(
    *,
    directory: Path,
    configfiles: Sequence[Path] = (),
    profile: Path | None = None,
    cores: str | None = None,
    extra: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The Snakemake command line of a run: this interpreter, the repository's Snakefile, absolute paths."""
    cmd = [python, "-m", "snakemake", "--snakefile", str(snakefile()), "--directory", str(directory.resolve())]
    if profile is not None:
        cmd += ["--workflow-profile", str(profile)]
    if configfiles:
        cmd += ["--configfile", *(str(Path(c).resolve()) for c in configfiles)]
    if cores is not None:
        cmd += ["--cores", cores]
    elif profile is None and not gives_cores(extra):
        cmd += ["--cores", "all"]  # Snakemake refuses a local run without cores; a profile may set them
    return cmd + list(extra)


def call(cmd: Sequence[str]) -> int:
    """Run a command in the foreground and return its exit code. Ctrl-C reaches Snakemake too (same process
    group): carve waits for it to stop its jobs and mark their outputs incomplete."""
    print(f"carve: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    process = subprocess.Popen([*cmd])  # an argument list, never a shell string
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue


def write_if_changed(path: Path, text: str) -> Path:
    """Write ``text`` unless the file holds it already (an unchanged input keeps its time: no rerun)."""
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def _one_line(err: BaseException) -> str:
    lines = [s.strip() for s in str(err).splitlines() if s.strip()]
    return "; ".join(lines) or type(err).__name__


# ---------------------------------------------------------------------------------------------------- run


def run_command(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    directory = Path(args.directory)
    if not directory.is_dir():
        raise CarveError(f"--directory {directory}: not a folder")
    for config in args.configfile or ():
        if not Path(config).is_file():
            raise CarveError(f"--configfile {config}: file not found")
    if not args.configfile and not (directory / "config" / "config.yaml").is_file():
        raise CarveError(
            f"give --configfile (no config/config.yaml in {directory.resolve()}); `carve init FOLDER` writes one"
        )
    profile = resolve_profile(args.profile) if args.profile else None
    return snakemake_command(
        directory=directory, configfiles=args.configfile or (), profile=profile, cores=args.cores, extra=extra
    )


def cmd_run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    return call(run_command(args, extra))


# ---------------------------------------------------------------------------------------------------- predict


def holds_dicom_files(folder: Path) -> bool:
    """A folder with DICOM files (or a DICOMDIR) directly in it: one series or study, so one case."""
    for entry in folder.iterdir():
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.name.upper() == "DICOMDIR" or entry.suffix.lower() in DICOM_SUFFIXES:
            return True
        try:
            with entry.open("rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def one_case_sheet(case: str, source: Path, work: Path) -> Path:
    """A sheet of one test case (its image by absolute path) in the work folder."""
    from carve.pipeline.sheet import check_case_id

    if (msg := check_case_id(case)) is not None:
        raise CarveError(f"{source}: case id '{case}' (from its name): {msg}; rename it")
    image = source.absolute().as_posix()
    if "\t" in image or "\n" in image:
        raise CarveError(f"{source}: a tab or line break in the path")
    return write_if_changed(work / "cases.tsv", f"case\timage\tlabel\trole\n{case}\t{image}\t\ttest\n")


def predict_cases(source: Path, work: Path, out: Path) -> Path:
    """The config's ``cases`` for an input: a folder of scans or a sheet as it is; one image file or one DICOM
    series folder becomes a one-row sheet in ``work``."""
    from carve.pipeline.init_layout import image_stem
    from carve.pipeline.sheet import SheetError, cases_from_folder

    if source.is_file():
        if source.name.lower().endswith(".tsv"):
            return source.resolve()
        stem = image_stem(source.name)
        if stem is None:
            raise CarveError(
                f"{source}: not an image file (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd) or a cases sheet (.tsv); "
                "a DICOM series is given by its folder"
            )
        return one_case_sheet(stem, source, work).resolve()
    if not source.is_dir():
        raise CarveError(f"{source}: no such file or folder")
    if holds_dicom_files(source):
        return one_case_sheet(source.resolve().name, source, work).resolve()
    if out.resolve().is_relative_to(source.resolve()):
        raise CarveError(f"-o {out} lies inside the scans folder {source}: it would be read as a case")
    try:
        cases_from_folder(source)
    except SheetError as err:
        raise CarveError(_one_line(err)) from None
    return source.resolve()


def predict_config(args: argparse.Namespace, cases: Path, out: Path) -> dict[str, object]:
    config: dict[str, object] = {"bundle": str(Path(args.bundle).resolve()), "cases": str(cases)}
    config["results"] = str(out.resolve())
    if args.device:
        config["device"] = args.device
    if args.rtstruct:
        config["dicom"] = {"rtstruct": True}
    return config


def prepare_predict(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """Check the bundle and the input, write the config (and a sheet for one scan) below OUT, and return the
    Snakemake command. Snakemake's working folder is OUT/logs/carve: its state stays out of the manifest."""
    import yaml

    from carve.prediction.bundle import BundleError, load_bundle

    snakefile()
    try:
        load_bundle(args.bundle)
    except BundleError as err:
        raise CarveError(_one_line(err)) from None
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CarveError(f"-o {out}: exists and is not a folder")
    if any(c in str(out.resolve()) for c in "{}"):
        raise CarveError(f"-o {out}: braces in the path would be read as Snakemake wildcards")
    work = out / PREDICT_WORK
    work.mkdir(parents=True, exist_ok=True)
    cases = predict_cases(Path(args.input), work, out)
    config = write_if_changed(work / "config.yaml", yaml.safe_dump(predict_config(args, cases, out), sort_keys=False))
    extra = ["--rerun-incomplete", *extra]  # outputs are written atomically: an interrupted job is simply redone
    return snakemake_command(directory=work, configfiles=[config], cores=args.cores or "all", extra=extra)


def cmd_predict(args: argparse.Namespace, extra: Sequence[str]) -> int:
    return call(prepare_predict(args, extra))


# ---------------------------------------------------------------------------------------------------- verify


def cmd_verify(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from carve.pipeline.provenance import print_comparison, print_verification

    try:
        if args.against:
            return print_comparison(Path(args.manifest), Path(args.against))
        return print_verification(Path(args.manifest), args.results)
    except ValueError as err:
        raise CarveError(_one_line(err)) from None


# ---------------------------------------------------------------------------------------------------- init


def note(text: str) -> None:
    print(f"carve: note: {text}", file=sys.stderr)


def init_files(args: argparse.Namespace) -> tuple[Path, Path, str, str]:
    """(config path, sheet path, config text, sheet text) for `carve init`; nothing is written here."""
    from carve.pipeline.init_layout import (
        LayoutError,
        channel_names,
        config_text,
        find_dataset,
        label_values,
        modality_of,
        parse_labels_option,
        sheet_text,
    )

    config_path = Path(args.output)
    sheet_path = Path(args.sheet) if args.sheet else config_path.parent / "cases.tsv"
    if not args.force:
        for path in (config_path, sheet_path):
            if path.exists():
                raise CarveError(f"{path} exists; give --force to overwrite it")
    try:
        found = find_dataset(args.folder)
        if args.labels:
            labels, labels_from = parse_labels_option(args.labels), "from --labels"
        elif found.info.labels:
            labels, labels_from = found.info.labels, f"from {found.info.path}"
        else:
            values = label_values(c.label for c in found.cases if c.label is not None)
            if not values:
                raise CarveError(f"{args.folder}: the label files hold no value above 0; give --labels 1=name,...")
            labels, labels_from = {v: f"label_{v}" for v in values}, "read from the label files: rename them"
            note(f"label names made up from the label files' values {values}: rename them in {config_path}")
        channels = channel_names(found)
        if args.modality:
            modality, modality_from = args.modality, "from --modality"
        elif found.info.channels:
            modality, modality_from = modality_of(found.info.channels[0]), f"from {found.info.path}"
        else:
            modality, modality_from = "MR", "assumed (no dataset.json): check it"
            note(f"modality MR assumed (no dataset.json, no --modality): set CT in {config_path} for CT scans")
        sheet = sheet_text(found, sheet_path, channels)
    except LayoutError as err:
        raise CarveError(_one_line(err)) from None
    if len(found.train) < 2:
        raise CarveError(f"{args.folder}: {len(found.train)} labelled training case(s); carve needs at least 2")
    cwd = Path.cwd()
    config = config_text(
        found,
        cases=_relative_to_cwd(sheet_path, cwd),
        results=args.results or f"results/{Path(args.folder).resolve().name}",
        labels=labels,
        labels_from=labels_from,
        modality=modality,
        modality_from=modality_from,
        channels=channels,
        config_name=str(config_path),
    )
    return config_path, sheet_path, config, sheet


def _relative_to_cwd(path: Path, cwd: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(cwd).as_posix()
    except ValueError:
        return absolute.as_posix()


def cmd_init(args: argparse.Namespace, extra: Sequence[str]) -> int:
    import yaml

    from carve.pipeline.sheet import SheetError, load_sheet

    config_path, sheet_path, config, sheet = init_files(args)
    for path, text in ((sheet_path, sheet), (config_path, config)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    channels = [c["name"] for c in yaml.safe_load(config).get("channels") or []]
    try:
        cases = load_sheet(sheet_path, channels)
    except SheetError as err:  # checked as written (paths relative to the sheet); left for a look when wrong
        raise CarveError(f"the written sheet {sheet_path} does not load: {_one_line(err)}") from None
    n_train = sum(c.role == "train" for c in cases)
    print(f"wrote {sheet_path} ({n_train} training, {len(cases) - n_train} test cases) and {config_path}")
    print(f"next: check {config_path}, then `carve run --configfile {config_path}` (add `-- --dry-run` to preview)")
    return 0


# ---------------------------------------------------------------------------------------------------- parser


def _verbose(parser: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="on an error, show the full traceback"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carve",
        description="carve: 3D medical image segmentation from few labelled scans (a Snakemake workflow).",
        epilog="`carve VERB --help` describes each verb. Snakemake options go after `--`.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"carve {carve.__version__}")
    _verbose(parser, default=False)
    verbs = parser.add_subparsers(title="verbs", dest="verb", metavar="VERB", required=True)

    def verb(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name,
            help=help_text,
            description=description,
            allow_abbrev=False,  # `--config` (Snakemake's) must not be taken for `--configfile`
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _verbose(sub)
        return sub

    run = verb(
        "run",
        "run the workflow: train, cross-validate, predict, evaluate, export",
        "Run the carve workflow (the repository's Snakefile) with Snakemake.\n\n"
        "  carve run --configfile my.yaml --cores 8\n"
        "  carve run --profile workstation --configfile my.yaml\n"
        "  carve run --configfile my.yaml -- --dry-run      (Snakemake options after --)\n\n"
        "Options carve does not know, and everything after `--`, are passed to Snakemake.\n"
        "The exit code is Snakemake's.",
    )
    run.add_argument("--configfile", action="append", metavar="FILE", help="the run's config (repeatable)")
    run.add_argument(
        "--profile",
        metavar="NAME_OR_DIR",
        help="a Snakemake profile folder, or one of the repository's profiles/ (workstation, slurm, slurm-local)",
    )
    run.add_argument("-c", "--cores", type=check_cores, help="cores to use, or 'all' (default: all, or the profile's)")
    run.add_argument(
        "-d",
        "--directory",
        default=".",
        metavar="DIR",
        help="working folder: relative paths of the config resolve here (default: the current folder)",
    )

    predict = verb(
        "predict",
        "segment new scans with a trained bundle (inference only)",
        "Segment new scans with a trained bundle (results/<run>/bundle): labels, uncertainty maps,\n"
        "meshes and, for DICOM input, DICOM-SEG, all below OUT.\n\n"
        "  carve predict -b results/hippocampus/bundle -i scan.nii.gz -o out/\n"
        "  carve predict -b bundle/ -i dicom_series/ -o out/ --rtstruct\n"
        "  carve predict -b bundle/ -i new_scans/ -o out/ --device cuda\n\n"
        "INPUT is one image file (NIfTI, NRRD, MHA), one DICOM series folder (DICOM files in it), a folder of\n"
        "them (each file or sub-folder is a case named after it), or a cases sheet (.tsv) of test cases.\n"
        "carve writes its config and Snakemake's state to OUT/logs/carve/. Everything after `--` goes to\n"
        "Snakemake. The exit code is Snakemake's.",
    )
    predict.add_argument("-b", "--bundle", required=True, metavar="BUNDLE", help="a trained bundle folder")
    predict.add_argument("-i", "--input", required=True, metavar="INPUT", help="scan file, DICOM folder or folder")
    predict.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created)")
    predict.add_argument("-c", "--cores", type=check_cores, help="cores to use, or 'all' (default: all)")
    predict.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="where to predict (default: auto, CUDA when present)"
    )
    predict.add_argument("--rtstruct", action="store_true", help="also write RTSTRUCT for DICOM input")

    verify = verb(
        "verify",
        "check a run's files against its manifest.json",
        "Re-hash the inputs and outputs of a run and compare them with its manifest.json.\n"
        "Exit code: 0 when nothing drifted, 1 when a file is missing, changed or extra, 2 on an error.",
    )
    verify.add_argument("manifest", metavar="MANIFEST", help="a run's manifest.json")
    verify.add_argument("--results", metavar="DIR", help="the results folder (default: the manifest's folder)")
    verify.add_argument(
        "--against",
        metavar="OTHER",
        help="another run's manifest.json: name what differs between the two runs, settings before files (exit 1)",
    )

    init = verb(
        "init",
        "write a cases sheet and a starting config from a folder of images and labels",
        "Write a cases sheet (TSV) and a starting config from a dataset folder in one of the layouts:\n\n"
        "  nnU-Net   imagesTr/CASE_0000.nii.gz (one file per channel), labelsTr/CASE.nii.gz\n"
        "  MSD       imagesTr/CASE.nii.gz, labelsTr/CASE.nii.gz (Medical Segmentation Decathlon)\n"
        "  plain     images/NAME.nii.gz, labels/NAME.nii.gz (matching names)\n\n"
        "imagesTs/ (nnU-Net, MSD) gives test cases. Label names come from --labels, else dataset.json,\n"
        "else the values in the label files (named label_1, label_2, ...: rename them); the modality from\n"
        "--modality, else dataset.json, else MR.\n\n"
        "  carve init data/Task04_Hippocampus -o hippocampus.yaml\n"
        "  carve run --configfile hippocampus.yaml",
    )
    init.add_argument("folder", metavar="FOLDER", help="the dataset folder")
    init.add_argument(
        "-o", "--output", default="config.yaml", metavar="CONFIG", help="config to write (default: config.yaml)"
    )
    init.add_argument("--sheet", metavar="TSV", help="the cases sheet to write (default: cases.tsv beside CONFIG)")
    init.add_argument("--results", metavar="DIR", help="the run's results folder (default: results/<FOLDER name>)")
    init.add_argument("--modality", choices=("MR", "CT", "other"), help="intensity normalisation")
    init.add_argument("--labels", metavar="1=NAME,2=NAME", help="label names by value")
    init.add_argument("--force", action="store_true", help="overwrite CONFIG and the sheet when they exist")
    return parser


VERBS = {"run": cmd_run, "predict": cmd_predict, "verify": cmd_verify, "init": cmd_init}
PASSES_THROUGH = ("run", "predict")


def split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """carve's own arguments and the Snakemake options after the first ``--``."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    own, extra = split_extra(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(own)
    if unknown and args.verb not in PASSES_THROUGH or extra and args.verb not in PASSES_THROUGH:
        parser.error(f"unrecognized arguments: {' '.join(unknown + extra)}")
    try:
        return VERBS[args.verb](args, [*unknown, *extra])
    except Exception as err:
        verbose = getattr(args, "verbose", False)
        if verbose:
            traceback.print_exc()
        hint = (
            ""
            if isinstance(err, CarveError) or verbose
            else f" (unexpected {type(err).__name__}: --verbose shows where)"
        )
        print(f"carve: error: {_one_line(err)}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
