"""Cross-architecture table: BP and DFA on ResMLP, ViT-Mini and SmallCNN (on the chosen data)
and on StudentNet (synthetic teacher-student task) — does (b) need a terminal LayerNorm?

    python examples/cross_architecture.py [--data fashion-mnist] [--seeds 42 123 456] [--cpu-sizes]

``--cpu-sizes`` trains a ViT-Mini of width 64 on patches of 8 (the paper's is 128 wide on
patches of 4), a few times cheaper on a CPU; the other architectures keep their sizes.
"""

from __future__ import annotations

import sys

import studies

from pytest_fa.training.data import load_dataset

SMOKE_ARCHS = {
    "resmlp": {"d": 32, "depth": 4},
    "vit-mini": {"d": 32, "depth": 2, "patch": 4, "heads": 2},
    "smallcnn": {"channels": 8, "depth": 3, "fc": 16},
    "studentnet": {"d": 32, "depth": 4},
}

CPU_ARCHS = {
    "resmlp": {"d": 256, "depth": 4},
    "vit-mini": {"d": 64, "depth": 4, "patch": 8, "heads": 4},
    "smallcnn": {"channels": 32, "depth": 3},
    "studentnet": {"d": 128, "depth": 4},
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = studies.study_parser(__doc__.splitlines()[0])
    parser.add_argument("--cpu-sizes", action="store_true", help="a narrower ViT-Mini on larger patches")
    args = parser.parse_args(argv)
    study = studies.setup(args)
    seeds = study.seeds if "--seeds" in argv else study.seeds[:1]
    synthetic = load_dataset("synthetic", **({"num_samples": 3000} if study.smoke else {}))
    results = studies.cross_architecture(
        {"default": study.data, "synthetic": synthetic}, study.out, seeds=seeds, epochs=study.epochs,
        device=study.device, batch_size=study.batch_size, archs=SMOKE_ARCHS if study.smoke else CPU_ARCHS if args.cpu_sizes else None, log=study.log,
    )
    study.write("cross_architecture", "Cross-architecture", studies.cross_architecture_table(results),
                "python examples/cross_architecture.py " + " ".join(argv), [vars(r) for r in results])
    return 0


if __name__ == "__main__":
    sys.exit(main())
