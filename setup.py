from setuptools import find_packages, setup

setup(
    name="llada-ds",
    version="0.1.0",
    description="Cluster-scale training of LLaDA-style masked diffusion language models with DeepSpeed",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["llada_ds", "llada_ds.*"]),
    # The packaged recipes, the default DeepSpeed configs and the remote-code files copied into
    # exports must ship with a non-editable install too.
    package_data={"llada_ds": ["recipes/*.yaml", "ds_configs/*.json", "hf/remote/*.py"]},
    # torch is deliberately a range: on CPU machines requirements/cpu.txt pins the CPU wheel,
    # on GPU machines the user's CUDA build is kept. 2.5 is the first with SDPA's enable_gqa.
    install_requires=[
        "torch>=2.5",
        # 0.19.8 is the first we verified to discard a step whose gradient norm is non-finite in
        # bf16/fp32 ZeRO-3 (our skip mechanism relies on it).
        "deepspeed>=0.19.8",
        "numpy",
        "pyyaml",
        "tqdm",
        "sentencepiece>=0.2",
        "datasets>=2.19",
        # The storage layer (object stores through it; s3fs / gcsfs come with the s3 / gcs extras).
        "fsspec",
        # Hugging Face tokenizer folders (released LLaDA tokenizers) and exports.
        "transformers>=4.44",
        "protobuf",
        # Imported directly (weights, export, push), not only through transformers.
        "safetensors",
        "huggingface_hub",
    ],
    extras_require={
        "gpu": ["flash-attn>=2.6"],
        "eval": ["lm-eval>=0.4.5"],
        # Tested offline in CI with 0.31 (older releases do not import against protobuf 7 or lack
        # what the monitor uses); newer ones are allowed once tested.
        "wandb": ["wandb>=0.31,<0.32"],
        # The Ray job (cluster/train.py): Ray Train V2; "default" brings the job server and CLI.
        "ray": ["ray[train,default]>=2.60"],
        # LoRA fine-tuning (lora.rank > 0), LoRA runs' inference and adapter exports. 0.21 is the
        # version checked here (inject_adapter_in_model, regex target_modules, enable_adapters).
        "lora": ["peft>=0.21"],
        # Object storage (s3://, S3-compatible stores, gs://) for shards and run directories, through
        # fsspec. s3fs pins fsspec to its own release and aiobotocore pins a narrow botocore range:
        # requirements/cpu.txt holds a set verified together (with datasets' fsspec bound).
        "s3": ["s3fs>=2024.12"],
        "gcs": ["gcsfs>=2024.12"],
        # bench/zero3_profile.py: wall-clock samples of both training ranks (0.4.3 checked here).
        "bench": ["py-spy>=0.4"],
        # moto's standalone server is the real S3 endpoint the tests talk to (on loopback).
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "lm-eval>=0.4.5", "ray[train,default]>=2.60",
                "wandb>=0.31,<0.32", "peft>=0.21", "s3fs>=2024.12", "moto[server]>=5.1"],
    },
    entry_points={"console_scripts": ["llada-ds=llada_ds.cli:main"]},
)
