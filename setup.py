"""scalenet_jax: ScaleNet-grow and ScaleNet-search in JAX/Flax."""

import setuptools

# Pinned to the versions this project is tested with (CPU, Python 3.11).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "grain==0.2.18",
    "absl-py==2.5.1",
    "etils[epath]==1.15.0",  # scalenet_jax.paths: one path API for local and gs:// workdirs
    "numpy==2.4.6",
    "scipy==1.17.1",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
    "safetensors==0.8.0",
    "pillow==13.0.0",
    "tokenizers==0.23.3",  # the decoder LM's byte-level BPE (scalenet_jax.data.text)
]
# torch/timm are only needed to convert weights against timm and for the parity tests/benchmarks.
# torch 2.14.1 + torchvision 0.29.1 are the pair that installs (and imports) together here.
TORCH = ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31"]
# TFDS datasets (data.name 'tfds:<name>', e.g. the paper configs' ImageNet); the tests run the TFDS paths on
# its mock data.
TFDS = ["tensorflow-datasets==4.9.10"]
# `--mode compile` (scalenet_jax.tpu_check): TPU programs compiled on any host. The libtpu that jax[tpu]==0.10.2
# resolves to (about 700 MB installed).
TPU = ["libtpu==0.0.42.1"]
# gs:// workdirs without TensorFlow: etils.epath reaches GCS through fsspec's gcsfs (Orbax through tensorstore).
GCS = ["gcsfs==2026.10.1"]

setuptools.setup(
    name="scalenet_jax",
    version="0.1.0",
    description="ScaleNet (grow pretrained ViTs with shared weights; one-shot NAS for scaling) in JAX/Flax",
    packages=setuptools.find_packages(include=["scalenet_jax", "scalenet_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "torch": TORCH,
        "gcs": GCS,
        "tpu": TPU,
        "tfds": TFDS,
        # transformers: the Llama parity / checkpoint tests (LlamaForCausalLM as the reference)
        # gcp-storage-emulator: a local GCS bucket for the gs:// workdir test
        "test": TORCH
        + GCS
        + TPU
        + TFDS
        + ["transformers==5.24.0", "gcp-storage-emulator==2026.7.19", "pytest==9.2.0", "pytest-xdist==3.8.0"]
        + ["pyink==26.5.1"],
    },
)
