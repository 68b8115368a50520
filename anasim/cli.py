"""The ``anasim`` command line.

Subcommands are small functions registered in ``COMMANDS``; each takes the parsed
arguments and returns an exit status. Errors anasim documents (bad model, bad config,
bad input) are printed as one line ``anasim: error: ...`` with exit status 2, never as a
traceback; set ``ANASIM_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .version import __version__
from .errors import AnasimError


def _cmd_inspect(args) -> int:
    from .graph.importer import load
    from .graph.summary import format_summary

    graph = load(args.model, fold_batchnorm=not args.keep_batchnorm)
    print(format_summary(graph))
    return 0


def _cmd_params(args) -> int:
    from .config import describe_parameters, format_parameters
    from .errors import ConfigError, closest

    records = describe_parameters()
    if args.name:
        wanted = args.name
        if "." in wanted:
            section, _, field = wanted.partition(".")
            hits = [r for r in records if r.section == section and r.name == field]
        else:
            hits = [r for r in records if r.section == wanted] or [r for r in records if r.name == wanted]
        if not hits:
            names = sorted({f"{r.section}.{r.name}" for r in records} | {r.section for r in records})
            raise ConfigError(f"No parameter or section {wanted!r}.{closest(wanted, names)} "
                              "Run 'anasim params' for the full list.")
        records = hits
    print(format_parameters(records))
    return 0


def _cmd_presets(args) -> int:
    from .config import list_presets, preset

    for name, text in list_presets().items():
        print(f"{name}\n    {text}")
        if args.verbose:
            toml = preset(name).to_toml(only_changed=True)
            print("    " + toml.replace("\n", "\n    ").rstrip())
        print()
    return 0


# --------------------------------------------------------------------------- experiments
DEFAULT_TIMES = "0,1h,1d,1y"
DEMO_LIMIT = 1000
DEMO_REPEATS = 3
_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
          "w": 7 * 86400.0, "y": 365 * 86400.0}


def parse_times(text: str) -> list[float]:
    """``"0,1,3600,1d,1y"`` -> seconds. Units: s, min, h, d, w, y (365 d); none = seconds."""
    import re

    from .errors import ConfigError

    if not text.strip():
        raise ConfigError(f"--times is empty; give at least one time, e.g. --times 0,1h,1d (without the "
                          f"option: {DEFAULT_TIMES}).")
    out = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"([0-9.eE+-]+)\s*([a-z]*)", part)
        if not m or (m.group(2) and m.group(2) not in _UNITS):
            raise ConfigError(f"--times: cannot read {part!r}; give seconds or a number with a unit "
                              f"({', '.join(_UNITS)}), e.g. --times 0,3600,1d,1y.")
        try:
            value = float(m.group(1)) * _UNITS.get(m.group(2) or "s")
        except ValueError:
            raise ConfigError(f"--times: cannot read {part!r} as a number of seconds.") from None
        out.append(value)
    return out


def _check_inputs(args, *, grid: bool = False) -> None:
    """Every file the command reads is readable, and the seed usable, before any work starts."""
    from .datasets import DataError
    from .errors import ConfigError, ModelLoadError
    from .files import check_readable
    from .kernels.rng import check_seed

    if getattr(args, "model", None) is not None:
        check_readable(args.model, "model", ModelLoadError)
    if getattr(args, "data", None) is not None:
        check_readable(args.data, "data set", DataError, directory_ok=True)
    if getattr(args, "config", None):
        check_readable(args.config, "configuration file", ConfigError)
    if grid:
        check_readable(args.grid, "grid file", ConfigError)
    if getattr(args, "seed", None) is not None:
        check_seed(args.seed, ConfigError, "--seed")


def _repo_data():
    """The folder of the bundled default model and data (None if absent)."""

    for folder in (Path(__file__).resolve().parents[1] / "data", Path.cwd() / "data"):
        if (folder / "fmnist_cnn.onnx").is_file() and (folder / "fmnist_test.npz").is_file():
            return folder
    return None


def _short_path(path):
    """``path`` relative to the working directory when it lies below it."""
    import os

    rel = os.path.relpath(path)
    return Path(rel) if not rel.startswith("..") else Path(path)


def _sidecar_preprocessing(model_path) -> "tuple[dict, str] | None":
    """The ``preprocessing`` table of ``MODEL.json`` beside the model (the bundled model's metadata)."""
    import json

    from .datasets import Preprocessing

    side = Path(model_path).with_suffix(".json")
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pre = meta.get("preprocessing") if isinstance(meta, dict) else None
    if not isinstance(pre, dict):
        return None
    fields = set(Preprocessing.field_names())
    return {k: v for k, v in pre.items() if k in fields}, str(side)


def _preprocessing(args, model_path):
    """Preprocessing from --preprocess/--mean/... or MODEL.json; returns (Preprocessing, note)."""
    from .datasets import Preprocessing, as_preprocessing

    fields = {}
    if args.scale is not None:
        fields["scale"] = _number(args.scale, "--scale")
    for name in ("mean", "std"):
        v = getattr(args, name)
        if v is not None:
            vals = [_number(x, f"--{name}") for x in v.split(",")]
            fields[name] = vals[0] if len(vals) == 1 else tuple(vals)
    for name in ("pad", "center_crop", "channels"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.layout is not None:
        fields["layout"] = args.layout
    if args.input_layout is not None:
        fields["input_layout"] = args.input_layout
    if args.preprocess is not None or fields:
        base = as_preprocessing(args.preprocess) if args.preprocess else Preprocessing()
        src = f"preset {args.preprocess}" if args.preprocess else "options"
        return (base.replace(**fields) if fields else base), src
    if model_path is not None:
        side = _sidecar_preprocessing(model_path)
        if side is not None:
            return Preprocessing.from_dict(side[0], where=side[1]), f"from {side[1]}"
    return Preprocessing(), "default (x/255; give --preprocess or --mean/--std/--scale/--pad)"


def _number(text: str, opt: str) -> float:
    from .errors import ConfigError

    text = text.strip()
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{opt}: cannot read {text!r} as a number (1/255 is accepted).") from None


def _describe_pre(pre) -> str:
    d = pre.to_dict()
    k = pre.divisor
    parts = []
    if d.get("center_crop"):
        parts.append(f"center crop {d['center_crop']}")
    if d.get("pad"):
        parts.append(f"pad {d['pad']}")
    parts.append(f"x/{k}" if k and k != 1 else ("x" if k == 1 else f"x*{d['scale']:g}"))

    def fmt(v):
        return ",".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else f"{v:g}"

    if d["mean"] != 0.0 or d["std"] != 1.0:
        parts.append(f"(x - {fmt(d['mean'])}) / {fmt(d['std'])}")
    if d.get("channels"):
        parts.append(f"{d['channels']} channels")
    parts.append(d["layout"])
    return ", ".join(parts)


def _describe_config(cfg, name: str, overrides) -> str:
    import math

    f, mp = cfg.forward, cfg.mapping

    def bits(r):
        return "off" if r is None else f"{round(math.log2(round(1 / r) + 2))}-bit"

    facts = []
    if f.is_ideal:
        facts.append("ideal periphery")
    else:
        facts.append(f"DAC {bits(f.input_resolution)}, ADC {bits(f.output_resolution)}")
        if f.out_noise:
            facts.append(f"out_noise {f.out_noise:g}")
        if f.w_noise and f.w_noise_type != "none":
            facts.append(f"w_noise {f.w_noise:g} ({f.w_noise_type})")
        if f.inp_noise:
            facts.append(f"inp_noise {f.inp_noise:g}")
        if f.ir_drop:
            facts.append(f"IR drop {f.ir_drop:g}")
    facts.append(f"tiles {mp.max_input_size}×{mp.max_output_size}")
    model, comp = cfg.noise_model, cfg.drift_compensation
    facts.append(f"device {model.config_type}" if model is not None else "ideal devices")
    if comp is not None:
        facts.append(f"{comp.config_type} drift compensation")
    text = f"{name}: " + ", ".join(facts)
    if overrides:
        text += "; --set " + " ".join(overrides)
    return text


def _check_outputs(paths, overwrite: bool, plot) -> None:

    from .experiment.storage import ResultsFileError, check_writable, result_format

    seen: dict = {}
    for p in list(paths or []) + ([plot] if plot else []):
        real = Path(p).resolve()
        if real in seen:
            raise ResultsFileError(f"{p} is named twice as an output ({seen[real]} and {p}); give each "
                                   "--out and --plot its own file.")
        seen[real] = p
    for p in paths or []:
        result_format(p)
        if Path(p).exists() and not overwrite:
            raise ResultsFileError(f"{p} exists; refusing to overwrite it (pass --overwrite, or choose "
                                   "another --out).")
        check_writable(p, overwrite=True)
    if plot:
        from .experiment.plot import plot_format

        plot_format(plot)  # matplotlib installed, and the extension is an image format it writes
        if Path(plot).exists() and not overwrite:
            raise ResultsFileError(f"{plot} exists; refusing to overwrite it (pass --overwrite).")
        check_writable(plot, overwrite=True)


def _config_and_name(args):
    from .experiment.evaluate import resolve_config

    if args.config and args.preset:
        from .errors import ConfigError

        raise ConfigError("Give --config or --preset, not both.")
    source = args.config or args.preset or "aihwkit"
    name = (f"config {args.config}" if args.config else f"preset {source}"
            + ("" if args.preset else " (default; choose with --preset/--config)"))
    return resolve_config(source, args.set or ()), name


def _cmd_evaluate(args) -> int:
    import time

    from .errors import InputError
    from .experiment import evaluate, format_time
    from .threads import set_threads

    t_start = time.perf_counter()
    say = (lambda *a: None) if args.quiet else print
    demo = args.model is None
    times_text = args.times
    if demo:
        folder = _repo_data()
        if folder is None:
            raise InputError("No MODEL given, and the bundled default model (data/fmnist_cnn.onnx with "
                             "data/fmnist_test.npz) is not here. Usage: anasim evaluate MODEL --data FILE "
                             "[--preset aihwkit] [--times 0,1h,1d] [--repeats 3].")
        folder = _short_path(folder)
        args.model = str(folder / "fmnist_cnn.onnx")
        if args.data is None:
            args.data = str(folder / "fmnist_test.npz")
            if args.limit is None:
                args.limit = DEMO_LIMIT
        if args.repeats is None:
            args.repeats = DEMO_REPEATS
    elif args.data is None:
        raise InputError("evaluate needs --data FILE (an .npz with x and y, CIFAR batches, IDX files, ...).")
    _check_inputs(args)
    repeats = args.repeats if args.repeats is not None else (1 if args.snapshot else 3)
    times = parse_times(DEFAULT_TIMES if times_text is None else times_text)
    _check_outputs(args.out, args.overwrite, args.plot)
    threads = set_threads(args.threads)
    cfg, cfg_name = _config_and_name(args)
    pre, pre_note = _preprocessing(args, args.model)
    fold = bool(cfg.mapping.fold_batchnorm)

    from .datasets import load_dataset

    data = load_dataset(args.data, preprocessing=pre, limit=args.limit, format=args.data_format)
    if demo:
        say("anasim evaluate — no MODEL given, so this runs the bundled demo: a small CNN trained on "
            "Fashion-MNIST,\nevaluated ideal (digital) and on a simulated analog PCM chip (aihwkit's "
            "default inference settings).\n")
    say(f"model   {args.model}  (sha256 {_sha_file(args.model)[:12]}…); BatchNorm "
        f"{'folded into the weights' if fold else 'kept digital'} "
        f"(mapping.fold_batchnorm = {str(fold).lower()})")
    n_total = getattr(data, "n_total", None) or len(data)
    subset = f"first {len(data)} of {n_total}" if len(data) < n_total else f"{len(data)}"
    say(f"data    {args.data}  ({subset} samples, sha256 {data.sha256[:12]}…); preprocessing "
        f"{_describe_pre(data.preprocessing)} [{pre_note}]")
    say(f"chip    {_describe_config(cfg, cfg_name, args.set)}")
    say(f"runs    {repeats} repetition{'s' * (repeats != 1)} (each a freshly programmed chip) × "
        f"{len(times)} time{'s' * (len(times) != 1)} after programming "
        f"({', '.join(format_time(t) for t in times)}); "
        f"seed {args.seed}" + (f"; {threads['threads']} threads" if threads else ""))
    say("")
    res = evaluate(args.model, data, cfg, times=times, repeats=repeats, seed=args.seed,
                   batch_size=args.batch_size, metric=args.metric, output=args.output,
                   progress=False if args.quiet else None, threads=args.threads, device=args.device,
                   calibrate=args.calibrate or 0, snapshot=args.snapshot)
    if args.calibrate or args.snapshot:
        row = next((r for r in res.rows if r["kind"] == "analog"), {})
        if row.get("calibration_samples"):
            say(f"calibration: {row.get('calibration', 'as saved in the snapshot')} on samples "
                f"{row['calibration_samples']} (held out: not scored); scored {row['n_samples']} samples")
    print(res.summary())
    say("")
    _explain(res, say, repeats)
    _save_results(res, args.out or [], args.overwrite, say)
    if args.plot:
        res.plot(args.plot, metric=args.metric if args.metric in res.metrics else None,
                 overwrite=args.overwrite)
        say(f"wrote {args.plot}")
    say(f"({time.perf_counter() - t_start:.1f} s)")
    if demo:
        say("\nNext: your own model — anasim evaluate MODEL.onnx --data test.npz --preprocess cifar10 "
            "--set forward.out_noise=0.02 --out results.csv\n"
            "      every hardware/noise parameter — anasim params;  grids of settings — anasim sweep --help")
    return 0


def _cmd_calibrate(args) -> int:
    from .analog.simulator import analog
    from .datasets import load_dataset
    from .errors import ConfigError
    from .experiment import calibrate, format_time
    from .graph.importer import load
    from .snapshot import save_snapshot
    from .threads import set_threads

    if args.data is None:
        raise ConfigError("calibrate needs --data FILE: its first -n N samples calibrate the chip.")
    _check_inputs(args)
    if args.n < 1:
        raise ConfigError(f"-n must be a positive number of calibration samples; got {args.n}.")
    if args.limit is not None:
        raise ConfigError("calibrate reads the data's first -n N samples; --limit does not apply (give -n).")
    if os.path.exists(args.snapshot) and not args.overwrite:
        raise ConfigError(f"{args.snapshot} exists; pass --overwrite to replace it.")
    set_threads(args.threads)
    cfg, cfg_name = _config_and_name(args)
    pre, _ = _preprocessing(args, args.model)
    data = load_dataset(args.data, preprocessing=pre, limit=args.n, format=args.data_format)
    t = parse_times(args.time)
    if len(t) != 1:
        raise ConfigError(f"--time takes one time; got {args.time!r}.")
    sim = analog(load(args.model), cfg, seed=args.seed)
    sim.program(args.repetition)
    if t[0] > 0:
        sim.drift(t[0])
    cal = calibrate(sim, data.x[:args.n])
    print(f"chip    {_describe_config(cfg, cfg_name, args.set)}; seed {args.seed}, repetition "
          f"{args.repetition}, t = {format_time(t[0])}")
    print(cal.summary())
    save_snapshot(sim, args.snapshot, overwrite=args.overwrite)
    print(f"wrote {args.snapshot}: evaluate it with anasim evaluate {args.model} --data {args.data} "
          f"--snapshot {args.snapshot} (same --config/--preset/--set and --seed)")
    return 0


def _save_results(res, paths, overwrite: bool, say) -> None:
    """Write every --out; if one cannot be written after all (checked before the run, but a
    disk can fill or a folder change), the results go to a file in the temporary folder and
    the error says where, so an evaluation is never lost."""
    import tempfile
    import time as _time

    from .errors import AnasimError
    from .experiment.storage import ResultsFileError

    for path in paths:
        try:
            res.save(path, overwrite=overwrite)
        except (OSError, AnasimError) as exc:
            suffix = Path(path).suffix.lower() if Path(path).suffix.lower() in (".csv", ".json", ".jsonl") else ".csv"
            rescue = Path(tempfile.gettempdir()) / f"anasim-results-{_time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}{suffix}"
            try:
                res.save(rescue)
            except (OSError, AnasimError):
                raise ResultsFileError(f"Cannot write {path} ({exc}), nor a copy in {rescue.parent}.") from None
            raise ResultsFileError(f"Cannot write {path} ({exc}); the results are safe in {rescue}.") from None
        say(f"wrote {path}")


def _explain(res, say, repeats) -> None:
    from .experiment import format_time
    from .experiment.metrics import get_metric

    m = get_metric(res.metrics[0])
    aggs = sorted(res.aggregate(m.name), key=lambda a: a["t_inference"])
    ideal = res.ideal(m.name)
    if not aggs or ideal is None:
        return
    first, last = aggs[0], aggs[-1]
    if m.percent:
        def gap(a):
            d = (ideal - a["mean"]) * 100
            return f"{abs(d):.2f} points {'below' if d >= 0 else 'above'} ideal"

        say(f"{m.label}: ideal {m.format(ideal)} %; analog {m.format(first['mean'])} % at "
            f"{format_time(first['t_inference'])} ({gap(first)})"
            + (f", {m.format(last['mean'])} % after {format_time(last['t_inference'])} ({gap(last)})"
               if last is not first else "") + ".")
    else:
        say(f"{m.label} ({m.name}): {m.format(first['mean'])} at {format_time(first['t_inference'])}"
            + (f", {m.format(last['mean'])} after {format_time(last['t_inference'])}"
               if last is not first else "")
            + " (0 = identical to the ideal network).")
    if repeats > 1:
        say(f"± is the standard deviation over the {repeats} programmed chips; the 95 % CI is the "
            f"t-interval of their mean.")
    else:
        say("With 1 repetition there is no spread to report (n/a); use --repeats 3 or more.")


def _sha_file(path) -> str:
    from .experiment.evaluate import _file_sha256

    return _file_sha256(path)


def _cmd_sweep(args) -> int:
    import time

    from .errors import InputError
    from .experiment import sweep
    from .experiment.storage import result_format

    t_start = time.perf_counter()
    say = (lambda *a: None) if args.quiet else print
    if args.out:
        result_format(args.out)
    _check_outputs([], args.overwrite, args.plot)
    if args.data is None:
        raise InputError("sweep needs --data FILE (an .npz with x and y, CIFAR batches, IDX files, ...).")
    _check_inputs(args, grid=True)
    pre, pre_note = _preprocessing(args, args.model)
    from .datasets import load_dataset

    data = load_dataset(args.data, preprocessing=pre, limit=args.limit, format=args.data_format)
    times = parse_times(args.times) if args.times is not None else None
    log = (lambda s: print(s, file=sys.stderr)) if not args.quiet else None
    if not args.out:
        say("(no --out: results are kept in memory only, and an interrupted sweep cannot resume)")
    res = sweep(args.model, data, args.grid, out=args.out, batch_size=args.batch_size, workers=args.workers,
                threads=args.threads, scheduler=args.scheduler, progress=False if args.quiet else None,
                times=times, repeats=args.repeats, seed=args.seed, metric=args.metric,
                overrides=args.set or (), output=args.output, log=log, device=args.device)
    print(res.summary())
    meta = res.meta
    say(f"\n{meta['points']} point(s): {meta['evaluated']} evaluated now, {meta['skipped']} already in "
        f"{args.out}" if args.out else f"\n{meta['points']} point(s) evaluated")
    if args.out:
        say(f"results in {args.out} ({len(res)} rows for this grid: one per point × time × "
            "repetition, plus the ideal row of each point)")
    if args.plot:
        res.plot(args.plot, x=args.x, overwrite=args.overwrite)  # checked before the sweep
        say(f"wrote {args.plot}")
    say(f"({time.perf_counter() - t_start:.1f} s)")
    return 0


def _cmd_sensitivity(args) -> int:
    import time

    from .errors import InputError
    from .experiment import format_time, sensitivity
    from .experiment.storage import ResultsFileError, check_writable, result_format

    t_start = time.perf_counter()
    say = (lambda *a: None) if args.quiet else print
    if args.data is None:
        raise InputError("sensitivity needs --data FILE (an .npz with x and y, CIFAR batches, IDX files, ...).")
    _check_inputs(args)
    if args.out:  # resumable: an existing file is resumed, not overwritten
        result_format(args.out)
        if args.plot and Path(args.out).resolve() == Path(args.plot).resolve():
            raise ResultsFileError(f"{args.plot} is named twice as an output (--out and --plot); give each "
                                   "its own file.")
        check_writable(args.out, overwrite=True)
    _check_outputs([], args.overwrite, args.plot)
    repeats = args.repeats if args.repeats is not None else 3
    times = parse_times(DEFAULT_TIMES if args.times is None else args.times)
    cfg, cfg_name = _config_and_name(args)
    pre, pre_note = _preprocessing(args, args.model)
    from .datasets import load_dataset

    data = load_dataset(args.data, preprocessing=pre, limit=args.limit, format=args.data_format)
    modes = {"both": ("only", "all-but"), "only": ("only",), "all-but": ("all-but",)}[args.mode]
    say(f"chip    {_describe_config(cfg, cfg_name, args.set)}")
    say(f"runs    per analog layer: {' and '.join(modes)} ({len(data)} samples; {repeats} "
        f"repetition{'s' * (repeats != 1)} × {len(times)} time{'s' * (len(times) != 1)} "
        f"({', '.join(format_time(t) for t in times)}); seed {args.seed})")
    if not args.out:
        say("(no --out: results are kept in memory only, and an interrupted run cannot resume)")
    log = (lambda s: print(s, file=sys.stderr)) if not args.quiet else None
    sens = sensitivity(args.model, data, cfg, times=times, repeats=repeats, seed=args.seed,
                       batch_size=args.batch_size, metric=args.metric, output=args.output,
                       layers=args.layer, modes=modes, out=args.out, workers=args.workers,
                       threads=args.threads, scheduler=args.scheduler,
                       progress=False if args.quiet else None, log=log, device=args.device)
    by = args.rank_by if args.rank_by in modes else modes[0]
    print(sens.table(by=by))
    meta = sens.results.meta
    if args.out:
        say(f"\n{meta['points']} point(s): {meta['evaluated']} evaluated now, {meta['skipped']} already in "
            f"{args.out}; results in {args.out} (one row per point × time × repetition, plus the ideal row "
            "of each point; columns layer, mode, tile_grid, n_params)")
    if args.plot:
        sens.plot(args.plot, by=by, overwrite=args.overwrite)  # checked before the run
        say(f"wrote {args.plot}")
    say(f"({time.perf_counter() - t_start:.1f} s)")
    return 0


def _cmd_show(args) -> int:
    import warnings

    from .experiment import Results
    from .experiment.storage import ResultsWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsWarning)
        res = Results.load(args.results, duplicates="first" if args.dedupe else "error",
                           damaged="drop" if args.drop_damaged else "error")
    for w in caught:  # rows left out are said first, on stderr
        if issubclass(w.category, ResultsWarning):
            print(f"anasim: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    print(res.summary(args.metric))
    if args.plot:
        _check_outputs([], args.overwrite, args.plot)
        res.plot(args.plot, metric=args.metric, x=args.x, overwrite=args.overwrite)
        print(f"wrote {args.plot}")
    return 0


def _add_data_options(s) -> None:
    g = s.add_argument_group("data and preprocessing")
    g.add_argument("--data", metavar="FILE",
                   help="data set: .npz (x, y), CIFAR batches/archive, IDX files, image folder")
    g.add_argument("--preprocess", metavar="NAME",
                   help="preprocessing preset: cifar10, fmnist32, fmnist28, none (default: MODEL.json "
                        "beside the model if it has a 'preprocessing' table, else x/255)")
    g.add_argument("--scale", metavar="S", help="x * S before mean/std (1/255 accepted)")
    g.add_argument("--mean", metavar="M[,M,M]", help="subtracted per channel after scaling")
    g.add_argument("--std", metavar="S[,S,S]", help="divisor per channel after the mean")
    g.add_argument("--pad", type=int, metavar="PX", help="zero padding on each side (raw value 0)")
    g.add_argument("--center-crop", type=int, metavar="PX", help="keep the central PX×PX window")
    g.add_argument("--channels", type=int, choices=(1, 3), help="force 1 (luma) or 3 (repeat grey) channels")
    g.add_argument("--layout", choices=("NCHW", "NHWC"), help="layout the model expects (default NCHW)")
    g.add_argument("--input-layout", choices=("auto", "NHW", "NHWC", "NCHW"), help="layout of x in an .npz")
    g.add_argument("--limit", type=int, metavar="N", help="use only the first N samples")
    g.add_argument("--data-format", metavar="FMT", help="the data file's format when it cannot be told from "
                   "the file (npz, cifar10-binary, idx, ...; see anasim.datasets.FORMATS)")


def _add_parallel_options(o) -> None:
    """--workers, --scheduler, --overwrite: the options of the commands that run a sweep."""
    o.add_argument("--workers", type=int, default=1, metavar="N", help="local worker processes (default 1)")
    o.add_argument("--scheduler", metavar="ADDRESS", help="run on a Dask cluster (needs dask[distributed])")
    o.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")


def _add_run_options(s, sweep: bool = False) -> None:
    g = s.add_argument_group("run")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set forward.out_noise=0.02 (repeatable; "
                        "anasim params lists them)")
    g.add_argument("--times", metavar="T,T,...",
                   help="t_inference: seconds after programming; units s, min, h, d, w, y allowed "
                        + ("(default: the grid file's, else 0)" if sweep else f"(default {DEFAULT_TIMES})"))
    g.add_argument("--repeats", type=int, metavar="N",
                   help="Monte-Carlo repetitions, each a freshly programmed chip "
                        + ("(default: the grid file's, else 1)" if sweep else "(default 3)"))
    g.add_argument("--seed", type=int, default=None if sweep else 0, metavar="S",
                   help="master seed (default 0)")
    g.add_argument("--metric", default=None if sweep else "top1",
                   help="top1 (default), top5, topK, logits_rel_error (‖y−y_ideal‖/‖y_ideal‖ per sample)")
    g.add_argument("--output", metavar="NAME", help="model output to score (default the first)")
    g.add_argument("--batch-size", type=int, default=256, metavar="B",
                   help="samples per forward pass (memory only; results do not depend on it; default 256)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="Numba and BLAS threads (default $ANASIM_NUM_THREADS, else all cores)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the network runs: cpu (default) or cuda (the whole network on the GPU "
                        "via numba.cuda; the same random numbers, results equal to float rounding)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no explanations")
    g.add_argument("--plot", metavar="PNG", help="draw the results (needs matplotlib)")


EVALUATE_EPILOG = """\
examples:
  anasim evaluate                      # the bundled demo (Fashion-MNIST CNN, aihwkit preset)
  anasim evaluate model.onnx --data cifar10_test1000.npz --preprocess cifar10 \\
      --preset aihwkit --set forward.out_noise=0.02 --times 0,1h,1d,1y --repeats 5 \\
      --out results.csv --plot accuracy.png

Results files (.csv, .json, .jsonl) hold one row per (t_inference, repetition) plus the
ideal row, with the model's and data's SHA-256, the preprocessing, the full configuration,
the seed and the anasim version. Existing files are kept unless --overwrite.
"""

CALIBRATE_EPILOG = """\
examples:
  anasim calibrate model.onnx --data test.npz --preset aihwkit --set calibration.affine=true \\
      --set calibration.adc_range=true -n 200 --snapshot chip.h5
  anasim evaluate model.onnx --data test.npz --preset aihwkit --set calibration.affine=true \\
      --set calibration.adc_range=true --snapshot chip.h5 --times 0,1h,1d

The methods (weight clipping, input and ADC ranges, per-output affine correction) are the
[calibration] section's (anasim params calibration). The snapshot holds the programmed
chip and its calibration; evaluating it scores only the samples after the first N.
"""

SWEEP_EPILOG = """\
grid file (TOML):
  base = "aihwkit"              # preset or configuration file
  times = [0, 3600]
  repeats = 3
  [grid]                        # Cartesian product
  "forward.out_res" = [62, 126, 254]
  "forward.out_noise" = [0.0, 0.02, 0.04]
  [[points]]                    # explicit points, in addition to [grid]
  "forward.out_noise" = 0.1

Rerunning the same command skips the points already in --out (a killed sweep loses only
the points that were running). See python -c "import anasim.experiment.sweep as s; help(s)".
"""


SENSITIVITY_EPILOG = """\
examples:
  anasim sensitivity model.onnx --data cifar10_test1000.npz --preprocess cifar10 \\
      --preset aihwkit --times 0,1d --repeats 3 --out sens.csv --plot sens.png

For every analog layer: the model with only that layer analog (the others digital) and
with every analog layer but that one, plus the configuration as given (all analog), with
the same seed, times and repetitions. The table ranks the layers by the drop below the
ideal score with only the layer analog (and shows the gain over all-analog with all but
it). --out is resumable like a sweep's; --workers and --scheduler as for a sweep.
"""


def _add_chip_options(s, config_help: str = "configuration file (.toml/.json)"):
    """The "chip" argument group of a subcommand with its --config and --preset; returned for
    the subcommand's own chip options."""
    c = s.add_argument_group("chip")
    c.add_argument("--config", metavar="CFG", help=config_help)
    c.add_argument("--preset", metavar="NAME", help="configuration preset (default aihwkit; anasim presets)")
    return c


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anasim",
        description="Simulate analog in-memory-computing inference hardware on trained ONNX networks.",
    )
    p.add_argument("--version", action="version", version=f"anasim {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("inspect", help="list a model's layers, shapes, parameters and analog layers")
    s.add_argument("model", help="path of an ONNX model")
    s.add_argument("--keep-batchnorm", action="store_true",
                   help="do not fold BatchNormalization into the preceding Conv/Gemm")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("params", help="every hardware/noise parameter: default, unit, valid range, meaning")
    s.add_argument("name", nargs="?",
                   help="a section (forward, mapping, noise_model, ...) or section.parameter")
    s.set_defaults(func=_cmd_params)

    s = sub.add_parser("presets", help="list the configuration presets and what they set")
    s.add_argument("-v", "--verbose", action="store_true", help="print each preset's settings as TOML")
    s.set_defaults(func=_cmd_presets)

    s = sub.add_parser("evaluate",
                       help="accuracy of a model on a data set: ideal and on the analog chip over time",
                       epilog=EVALUATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("model", nargs="?", help="ONNX model (omit for the bundled Fashion-MNIST demo)")
    c = _add_chip_options(s)
    c.add_argument("--calibrate", type=int, metavar="N",
                   help="calibrate every chip on the data's first N samples (the [calibration] methods; "
                        "anasim params calibration) and score only the others")
    c.add_argument("--snapshot", metavar="CHIP.h5",
                   help="evaluate this saved chip (e.g. from anasim calibrate) instead of programming "
                        "fresh ones; its calibration samples are not scored (default --repeats 1)")
    _add_data_options(s)
    _add_run_options(s)
    o = s.add_argument_group("output")
    o.add_argument("--out", action="append", metavar="FILE",
                   help="write results: .csv, .json or .jsonl (repeatable)")
    o.add_argument("--overwrite", action="store_true", help="replace existing --out/--plot files")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("calibrate", help="program a chip, calibrate it on the data's first N samples, save it",
                       epilog=CALIBRATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("model", help="ONNX model")
    c = _add_chip_options(s, "configuration file (.toml/.json) with a [calibration] table")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set calibration.affine=true (repeatable)")
    c.add_argument("--seed", type=int, default=0, metavar="S", help="master seed (default 0)")
    c.add_argument("--repetition", type=int, default=0, metavar="R",
                   help="which Monte-Carlo chip to program (default 0)")
    c.add_argument("--time", default="0", metavar="T",
                   help="calibrate the chip T after programming (default 0: right after programming)")
    c.add_argument("-n", type=int, default=200, metavar="N",
                   help="calibration samples: the data's first N (default 200; labels are not used)")
    c.add_argument("--threads", type=int, metavar="N", help="Numba and BLAS threads")
    _add_data_options(s)
    o = s.add_argument_group("output")
    o.add_argument("--snapshot", required=True, metavar="CHIP.h5", help="where to save the calibrated chip")
    o.add_argument("--overwrite", action="store_true", help="replace an existing snapshot")
    s.set_defaults(func=_cmd_calibrate)

    s = sub.add_parser("sweep", help="evaluate a grid of configurations (resumable; local processes or Dask)",
                       epilog=SWEEP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("model", help="ONNX model")
    s.add_argument("--grid", required=True, metavar="GRID.toml", help="the grid file (see below)")
    _add_data_options(s)
    _add_run_options(s, sweep=True)
    o = s.add_argument_group("output and parallelism")
    o.add_argument("--out", metavar="FILE",
                   help="results file (.csv, .jsonl, .json); finished points are skipped on rerun")
    o.add_argument("--x", metavar="PARAM",
                   help="parameter on the plot's x axis (default the first swept one)")
    _add_parallel_options(o)
    s.set_defaults(func=_cmd_sweep)

    s = sub.add_parser("sensitivity",
                       help="per analog layer: accuracy with only it analog, and with all but it analog",
                       epilog=SENSITIVITY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("model", help="ONNX model")
    c = _add_chip_options(s)
    c.add_argument("--layer", action="append", metavar="NAME",
                   help="study only this analog layer (node name or glob; repeatable; default all)")
    c.add_argument("--mode", choices=("both", "only", "all-but"), default="both",
                   help="points per layer: only it analog, all but it analog, or both (default)")
    c.add_argument("--rank-by", choices=("only", "all-but"), default="only",
                   help="rank by the drop with only the layer analog (default) or the gain with all but it")
    _add_data_options(s)
    _add_run_options(s)
    o = s.add_argument_group("output and parallelism")
    o.add_argument("--out", metavar="FILE",
                   help="results file (.csv, .jsonl, .json); finished points are skipped on rerun")
    _add_parallel_options(o)
    s.set_defaults(func=_cmd_sensitivity)

    s = sub.add_parser("show", help="summarize (and plot) a results file")
    s.add_argument("results", help="results file (.csv, .json, .jsonl)")
    s.add_argument("--metric", help="metric to summarize (default the file's first)")
    s.add_argument("--plot", metavar="PNG", help="draw the results (needs matplotlib)")
    s.add_argument("--x", metavar="PARAM", help="parameter on the plot's x axis")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    s.add_argument("--dedupe", action="store_true",
                   help="keep the first of rows repeated for the same (point, t_inference, repetition) "
                        "(default: refuse such a file; copies would count as extra repetitions)")
    s.add_argument("--drop-damaged", action="store_true",
                   help="leave out rows that cannot be read, with a warning naming them (default: refuse)")
    s.set_defaults(func=_cmd_show)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        # a warning is a message to the user: one line, no source line of anasim's
        print(f"anasim: warning: {' '.join(str(message).split())}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            return int(args.func(args) or 0)
    except AnasimError as exc:
        if os.environ.get("ANASIM_DEBUG"):
            raise
        text = " ".join(str(exc).split("\n"))
        if len(text) > 4000:  # a message quoting some enormous value: keep both ends
            text = f"{text[:3000]} … [{len(text) - 3500} characters cut] … {text[-500:]}"
        print(f"anasim: error: {text}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and friends
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("anasim: interrupted", file=sys.stderr)
        return 130
