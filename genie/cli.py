"""Command line: ``python -m genie run ...`` (see ``python -m genie run --help``)."""
from __future__ import annotations

import argparse

from .distill.distiller import DEFAULT_ITERS, DISTILLERS, DistillConfig
from .errors import GenieError, exit_status
from .quant.recon_state import QDROP_INPUTS, ROUND_WEIGHT_ADAROUND, ROUND_WEIGHT_GENIE, ReconConfig
from .pipeline import DEFAULT_SENSITIVITY_SAMPLES
from .quant.sensitivity import DEFAULT_CANDIDATES, SENSITIVITY_METHODS
from .sweep import add_sweep_parser, run_sweep
from .validate import OneLineParser, apply_option_ranges


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet20_cifar10", help="zoo model name (python -m genie models lists them)")
    p.add_argument("--w-bits", type=int, default=4,
                   help="weight bits, 2-8 (default 4), or 'mixed': one per layer under --budget-bits")
    p.add_argument("--a-bits", type=int, default=4, help="activation bits, 2-8 (default 4)")
    p.add_argument("--data", default="real", choices=["real", "synthetic"],
                   help="calibration data: real images (few-shot) or distilled by GENIE-D (zero-shot)")
    p.add_argument("--samples", type=int, default=None,
                   help="number of calibration images (default 1024; with --calib-file: all of its images)")
    _add_distill_arguments(p)
    p.add_argument("--calib-file", default=None,
                   help="with --data synthetic: use a distilled set saved by 'python -m genie distill'")
    p.add_argument("--recon-iters", type=int, default=ReconConfig.iters,
                   help=f"reconstruction iterations per unit (default {ReconConfig.iters})")
    p.add_argument("--quantizer", default="genie", choices=["genie", "adaround", "nearest"],
                   help="weight quantizer: genie (joint step size + softbits), adaround (frozen step), nearest")
    p.add_argument("--batch-size", type=int, default=ReconConfig.batch_size,
                   help=f"reconstruction batch size (default {ReconConfig.batch_size})")
    p.add_argument("--setting", default="brecq", choices=["brecq", "all"],
                   help="brecq: first/last layer 8-bit (paper Tables 2,3,5); all: every layer at the target bits")
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false", help="keep BatchNorm unfolded (reference behaviour)")
    p.add_argument("--weight-symmetric", action="store_true",
                   help="signed weights with zero point 0 (runtimes such as TensorRT) instead of asymmetric")
    p.add_argument("--act-symmetric", action="store_true",
                   help="every activation signed with zero point 0, also after a ReLU (TensorRT's int8 "
                        "convention; with --weight-symmetric for such runtimes)")
    p.add_argument("--profile", default="paper", choices=["paper", "deploy"],
                   help="paper: activations quantized as in the paper (default); deploy: also the image, both "
                        "inputs of every residual add and unit outputs at 8 bits, so integer runtimes run "
                        "every layer in integers")
    p.add_argument("--export-onnx", action="store_true", help="also write OUT/model.onnx (QDQ; see genie export)")
    _add_onnx_int_argument(p)
    p.add_argument("--drop-prob", type=float, default=ReconConfig.drop_prob,
                   help=f"QDrop probability (0 disables; default {ReconConfig.drop_prob})")
    p.add_argument("--qdrop-input", default=ReconConfig.qdrop_input, choices=list(QDROP_INPUTS),
                   help="QDrop at a unit's input: qdrop (one mask picks the FP or the quantized input) or reference "
                        f"(the authors' code: mixed, then dropped again by the input quantizer); default "
                        f"{ReconConfig.qdrop_input}")
    p.add_argument("--keep-ties", dest="guard_ties", action="store_false",
                   help="leave trained activation step sizes where many calibration values round at a tie "
                        "(by default they move by under 0.1 %% so float arithmetic cannot decide those roundings)")
    p.add_argument("--round-weight", type=float, default=None,
                   help=f"lambda of the rounding regulariser (Eq. 15; default {ROUND_WEIGHT_GENIE} for genie, "
                        f"{ROUND_WEIGHT_ADAROUND} for adaround)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--test-source", default="auto", choices=["auto", "npz", "lossless100", "torchvision"],
                   help="CIFAR-10 test set: offline npz (JPEG-degraded), the 100 lossless images, or torchvision's")
    p.add_argument("--data-dir", default=None, help="ImageNet models: folder with train/ and val/ subfolders")
    p.add_argument("--cuda-graph", action="store_true",
                   help="GPU: capture each training step once as a CUDA graph and replay it (much less launch overhead)")
    p.add_argument("--out", default=None,
                   help="folder for result.json and qmodel.pt; a rerun of an interrupted run into it resumes "
                        "(distillation at the first unfinished batch, reconstruction at the first unfinished unit)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep OUT/recon_checkpoints (one file per reconstructed unit) after the run succeeds")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    m = p.add_argument_group("mixed precision (--w-bits mixed)")
    m.add_argument("--budget-bits", type=float, default=None,
                   help="weight memory budget: that of the uniform W<B> model under the same --setting (e.g. 2.5)")
    m.add_argument("--sensitivity-samples", type=int, default=DEFAULT_SENSITIVITY_SAMPLES,
                   help=f"calibration images the sensitivity is measured on (default {DEFAULT_SENSITIVITY_SAMPLES})")
    m.add_argument("--sensitivity-file", default=None,
                   help="a sensitivity table written by 'python -m genie sensitivity' (instead of measuring)")
    _add_sensitivity_arguments(m)


def _add_sensitivity_arguments(p) -> None:
    p.add_argument("--w-candidates", type=int, default=DEFAULT_CANDIDATES,
                   help="bit widths a layer may get, e.g. 2,3,4,8 (default " + ",".join(map(str, DEFAULT_CANDIDATES))
                        + ")")
    p.add_argument("--sensitivity", default="kl", choices=list(SENSITIVITY_METHODS),
                   help="kl: KL divergence of the outputs with one layer quantized (ZeroQ; default); fisher: a "
                        "gradient estimate of it (one backward pass, cheaper)")


def _add_onnx_int_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx-int", default="qcdq", choices=["qcdq", "int4"],
                   help="ONNX integer form: qcdq (opset 13, int8 containers + Clip, 2-8 bits; default) or "
                        "int4 (opset 21, native INT4/UINT4 for 4-bit tensors, 4-8 bits)")


def _add_distill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--distiller", default=DistillConfig.distiller, choices=list(DISTILLERS),
                   help="genie: generator + trained latents; direct: pixels (ZeroQ); generator: fixed noise (GBA)")
    p.add_argument("--swing", dest="swing", action="store_true", default=DistillConfig.swing,
                   help="swing convolution on" + (" (default)" if DistillConfig.swing else ""))
    p.add_argument("--no-swing", dest="swing", action="store_false",
                   help="swing convolution off" + ("" if DistillConfig.swing else " (default)"))
    p.add_argument("--distill-iters", type=int, default=DistillConfig.iters,
                   help="distillation iterations per batch (default: "
                        + ", ".join(f"{name} {iters}" for name, iters in DEFAULT_ITERS.items()) + ")")
    p.add_argument("--distill-batch", type=int, default=DistillConfig.batch_size,
                   help=f"images per distillation batch (default {DistillConfig.batch_size})")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command. Numeric options get their types (parsing and range) from
    :data:`genie.validate.OPTION_RANGES` by dest; ``type=int``/``float`` below only marks them.
    A parse error is a :class:`GenieError` (one line, exit status 2 in :func:`main`)."""
    parser = OneLineParser(prog="python -m genie", description="GENIE zero-shot / few-shot quantization")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="quantize a model, evaluate it, write result.json and qmodel.pt")
    _add_run_arguments(run_p)
    sub.add_parser("models", help="list the zoo models")
    d = sub.add_parser("distill", help="distil a synthetic calibration set (GENIE-D); works under torchrun")
    d.add_argument("--model", default="resnet20_cifar10", help="zoo model name")
    d.add_argument("--samples", type=int, default=DistillConfig.num_images,
                   help=f"number of images to distil (default {DistillConfig.num_images})")
    _add_distill_arguments(d)
    d.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    d.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    d.add_argument("--concurrent-batches", type=int, default=None,
                   help="batches distilled together (default: all on a GPU, one on a CPU)")
    d.add_argument("--checkpoint-dir", default=None, help="save finished batches here; a rerun resumes")
    d.add_argument("--cuda-graph", action="store_true", help="GPU: replay the distillation step as a CUDA graph")
    d.add_argument("--out", required=True, help="file to write the distilled set to (.pt)")
    d.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    e = sub.add_parser("export", help="write a saved quantized model (qmodel.pt) as an ONNX QDQ file")
    e.add_argument("qmodel", help="a quantized model written by genie (DIR/qmodel.pt)")
    e.add_argument("--out", required=True, help="the ONNX file to write (e.g. model.onnx)")
    e.add_argument("--model", default=None,
                   help="zoo model the file was quantized from (default: the name stored in the file)")
    _add_onnx_int_argument(e)
    e.add_argument("--image-size", type=int, default=None,
                   help="input side in pixels (default: the zoo model's)")
    s = sub.add_parser("sensitivity", help="measure each layer's sensitivity to weight bits; write the table (JSON)")
    s.add_argument("--model", default="resnet20_cifar10", help="zoo model name")
    s.add_argument("--data", default="synthetic", choices=["real", "synthetic"],
                   help="images the sensitivity is measured on: distilled by GENIE-D (default) or real")
    s.add_argument("--samples", type=int, default=DEFAULT_SENSITIVITY_SAMPLES,
                   help=f"number of images (default {DEFAULT_SENSITIVITY_SAMPLES}; with --calib-file: all of its images)")
    _add_distill_arguments(s)
    s.add_argument("--calib-file", default=None, help="with --data synthetic: a distilled set saved by 'genie distill'")
    _add_sensitivity_arguments(s)
    s.add_argument("--setting", default="brecq", choices=["brecq", "all"],
                   help="brecq: first/last layer kept at 8 bits and not measured; all: every layer measured")
    s.add_argument("--no-fold-bn", dest="fold_bn", action="store_false", help="keep BatchNorm unfolded")
    s.add_argument("--weight-symmetric", action="store_true", help="signed weights with zero point 0")
    s.add_argument("--budget-bits", type=float, default=None, help="also print the allocation under this budget")
    s.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    s.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    s.add_argument("--test-source", default="auto", help=argparse.SUPPRESS)
    s.add_argument("--data-dir", default=None, help="ImageNet models: folder with train/ and val/ subfolders")
    s.add_argument("--out", required=True, help="the JSON file to write the table to")
    s.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_sweep_parser(sub)
    return apply_option_ranges(parser)


def _run(args: argparse.Namespace) -> int:
    from .pipeline import RunConfig, run

    fields = RunConfig.__dataclass_fields__
    cfg = RunConfig(**{k: v for k, v in vars(args).items() if k in fields})
    # the accuracies are printed before any file is written: a failed write cannot hide them
    run(cfg, report=lambda result: print(result.table(), flush=True))
    if cfg.out:
        onnx_file = f" and {cfg.out}/model.onnx" if cfg.export_onnx else ""
        print(f"\nwrote {cfg.out}/result.json, {cfg.out}/qmodel.pt{onnx_file}")
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    from .devices import resolve_device
    from .files import check_output_file
    from .models import load_model, model_spec
    from .pipeline import RunConfig, calibration_images, load_calibration_file
    from .quant.allocation import allocate, check_budget, pareto_front
    from .quant.sensitivity import check_candidates, measure_sensitivity

    spec = model_spec(args.model)
    check_output_file(args.out, "the sensitivity table", "--out ")
    candidates = check_candidates(args.w_candidates, "--w-candidates")
    if args.budget_bits is not None:
        check_budget(args.budget_bits)
    fields = RunConfig.__dataclass_fields__
    cfg = RunConfig(**{k: v for k, v in vars(args).items() if k in fields and k != "out"})
    if cfg.data == "synthetic" and not cfg.calib_file:
        cfg.distill_config().validate()
    if spec.dataset != "cifar10" and cfg.data_dir is None:
        raise GenieError(f"{spec.name} is an ImageNet model: pass --data-dir, a folder with train/ and val/ subfolders")
    preloaded = load_calibration_file(cfg, spec) if cfg.calib_file else None
    device = resolve_device(args.device)
    model = load_model(args.model).to(device)
    images, source, _ = calibration_images(spec, model, cfg, device, None, preloaded)
    table = measure_sensitivity(model, images.to(device), candidates, args.sensitivity, args.setting, args.fold_bn,
                                args.weight_symmetric, seed=args.seed, model_name=args.model)
    table.extra["calib_source"] = source
    front = pareto_front(table)
    print(f"{args.sensitivity} sensitivity of {len(table.layers)} layers x {len(table.bits)} bit widths on "
          f"{table.images} images ({source}) in {table.seconds:.1f} s; {len(front)} Pareto-optimal allocations")
    if args.budget_bits is not None:
        alloc = allocate(table, args.budget_bits, front)
        print(f"budget {args.budget_bits:g} bits per weight: {alloc.summary()}")
        for layer, bits in alloc.bits.items():
            print(f"  {layer:<28} {bits}")
    table.save(args.out)
    print(f"wrote {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import check_output_path, export_onnx
    from .export.graph import require_onnx
    from .models import load_model, model_spec
    from .quant import load_quantized

    out = check_output_path(args.out)
    require_onnx()
    model = None
    arch = args.model
    if arch is not None:
        model = load_model(arch, pretrained=False)
    qmodel = load_quantized(args.qmodel, model=model)
    arch = arch or qmodel.arch
    if args.image_size is None and not arch:
        raise GenieError(f"{args.qmodel} names no zoo model: pass --model NAME or --image-size PIXELS")
    size = args.image_size or model_spec(arch).image_size
    if arch and qmodel.arch is None:
        qmodel.arch = arch
    report = export_onnx(qmodel, out, (1, 3, size, size), int_form=args.onnx_int)
    ops = ", ".join(f"{k} {v}" for k, v in report.operators.items())
    print(f"wrote {report.path} ({report.file_bytes} bytes, opset {report.opset}, {report.int_form}): {ops}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import list_models, model_spec

    for name in list_models():
        spec = model_spec(name)
        extra = f"  ({spec.note})" if spec.note else ""
        print(f"{name:<20} {spec.dataset:<9} {spec.image_size:>4}px{extra}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from .distill import DistillConfig, distill
    from .distill.distributed import distill_sharded, init_process_group, launched_by_torchrun
    from .files import check_output_file, check_output_folder
    from .devices import resolve_device
    from .models import load_model, model_spec

    spec = model_spec(args.model)
    check_output_file(args.out, "the distilled set", "--out ")
    if args.checkpoint_dir:
        check_output_folder(args.checkpoint_dir, "distillation checkpoints", "--checkpoint-dir ")
    cfg = DistillConfig(num_images=args.samples, distiller=args.distiller, swing=args.swing,
                        iters=args.distill_iters, batch_size=args.distill_batch, seed=args.seed,
                        concurrent_batches=args.concurrent_batches).validate()
    kwargs = dict(checkpoint_dir=args.checkpoint_dir, model_name=args.model, cuda_graph=args.cuda_graph)
    if not launched_by_torchrun():
        device = resolve_device(args.device)
        model = load_model(args.model).to(device)
        _save_distilled(distill(model, spec.image_size, cfg, progress=args.progress, **kwargs), args, device)
        return 0
    import torch.distributed as dist

    device = init_process_group(args.device)
    try:
        model = load_model(args.model).to(device)
        distilled = distill_sharded(model, spec.image_size, cfg, progress=args.progress, **kwargs)
        if distilled is not None:  # rank 0
            _save_distilled(distilled, args, device)
        # every rank leaves together: a rank exiting while the others still talk to it aborts
        # inside gloo/nccl
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def _save_distilled(distilled, args: argparse.Namespace, device) -> None:
    meta = distilled.metadata
    print(f"distilled {len(distilled)} images from {args.model} with {meta['distiller']} "
          f"(swing {meta['swing']}, {meta['iters']} iterations) in {meta['seconds']:.1f} s on {device}; "
          f"BNS loss {distilled.initial_loss:.4g} -> {distilled.final_loss:.4g}", flush=True)
    distilled.save(args.out)
    print(f"wrote {args.out}")


def main(argv=None) -> int:
    commands = {"run": _run, "models": _models, "distill": _distill, "export": _export, "sweep": run_sweep,
                "sensitivity": _sensitivity}

    def parsed_and_run() -> int:
        # every option is parsed and range-checked here, before any command starts
        args = build_parser().parse_args(argv)
        return commands[args.command](args)

    return exit_status("genie", parsed_and_run)
