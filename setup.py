from setuptools import find_packages, setup

# Extras by use: install what the use needs (`pip install -e ".[export]"`); `[test]` is all of
# them, since the suite checks exports against transformers and executes the notebooks.
# notebooks/: drawing (matplotlib) and running them outside Jupyter (nbclient, ipykernel).
NOTEBOOKS = ["matplotlib>=3.8", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"]
# zoo-export / zoo-import checked against, and handed to, PyTorch + transformers. On Linux, PyPI's
# torch is the CUDA build (several GB): install the CPU build first where that is what you need
# (README, "Installing"); `make` does, and installs the versions of requirements/lock.txt.
EXPORT = ["torch>=2.4", "transformers>=5.0,<6"]

setup(
    name="zoo",
    version="0.1.0",
    description="A JAX-native model zoo for fast generation: AR, SSM/hybrid, next-block and "
                "masked-diffusion generators sharing one decoding core and one Pallas kernel package.",
    python_requires=">=3.10",
    packages=find_packages(include=["zoo", "zoo.*", "launch", "launch.*"]) + ["zoo.configs"]
    + ["zoo_kernels"] + [f"zoo_kernels.{p}" for p in find_packages("kernels")],
    # configs/ ships inside the package as zoo/configs, so an installed zoo finds its experiments
    # and model catalog (zoo.config.configs_dir) outside a checkout. kernels/ ships as
    # `zoo_kernels`: PyPI's `kernels` is Hugging Face's (transformers imports it), so the folder
    # has no __init__.py and is never a package named `kernels`, even with the checkout on
    # sys.path; `zoo_kernels` is a namespace package mapped from it.
    package_dir={"zoo.configs": "configs", "zoo_kernels": "kernels"},
    package_data={"zoo.configs": ["experiments/*.yaml", "models/*.yaml"]},
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8,<0.13",
        "tensorflow-datasets>=4.9.10",
        "array_record>=0.8.6",
        "chex>=0.1.92",
        "numpy>=2.0",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "psutil>=5.9",
        "safetensors>=0.4",
        "pillow>=10",
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
        "tokenizers>=0.20",  # Hugging Face tokenizers for imported models and their runs
    ],
    extras_require={
        "export": EXPORT,
        "notebooks": NOTEBOOKS,
        # Accelerators: the jax build with its runtime (libtpu / CUDA); kernels/ picks Mosaic on
        # TPU and Triton on GPU.
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "scipy>=1.12", *EXPORT, *NOTEBOOKS],
    },
    entry_points={"console_scripts": [
        "zoo-train=launch.train:main",
        "zoo-generate=launch.generate:main",
        "zoo-export=launch.export:export_main",
        "zoo-import=launch.export:import_main",
        "zoo-tpu=launch.tpu.pod:main",
    ]},
)
