"""Data: Market-layout loaders, re-id transforms, Siamese pairs and the procedural pedestrian generator.

See docs/design.md, sections 5 (protocol) and 6 (data).
"""
from casn_core.data.market import (
    IMAGE_EXTENSIONS,
    SPLIT_FOLDERS,
    DatasetError,
    DatasetNotFoundError,
    ImageDataset,
    ImageRecord,
    ReidDataset,
    SplitReport,
    SplitStats,
    load_market,
    load_split,
    parse_market_name,
    read_image,
)
from casn_core.data.synth import GENERATOR_VERSION, SynthSpec, generate_dataset
from casn_core.data.pairs import PairDataset, PairSampling, PairSamplingError, pair_indices
from casn_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform, build_train_transform

__all__ = [
    "IMAGE_EXTENSIONS", "SPLIT_FOLDERS", "DatasetError", "DatasetNotFoundError", "ImageDataset", "ImageRecord",
    "ReidDataset", "SplitReport", "SplitStats", "load_market", "load_split", "parse_market_name", "read_image",
    "PairDataset", "PairSampling", "PairSamplingError", "pair_indices",
    "GENERATOR_VERSION", "SynthSpec", "generate_dataset",
    "IMAGENET_MEAN", "IMAGENET_STD", "build_test_transform", "build_train_transform",
]
