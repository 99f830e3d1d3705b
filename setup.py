from setuptools import find_packages, setup

# What notebooks/ needs to draw (matplotlib) and what runs them outside Jupyter (the tests).
NOTEBOOKS = ["matplotlib>=3.8", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"]

setup(
    name="zoo",
    version="0.1.0",
    description="A JAX-native model zoo for fast generation: AR, SSM/hybrid, next-block and "
                "masked-diffusion generators sharing one decoding core and one Pallas kernel package.",
    python_requires=">=3.10",
    packages=find_packages(include=["zoo", "zoo.*", "kernels", "kernels.*", "launch", "launch.*"])
    + ["zoo.configs"],
    # configs/ ships inside the package as zoo/configs, so an installed zoo finds its experiments
    # and model catalog (zoo.config.configs_dir) outside a checkout.
    package_dir={"zoo.configs": "configs"},
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
    ],
    # torch + transformers are the reference the export tests check zoo's logits against; the
    # tests also execute the notebooks.
    extras_require={"test": ["pytest>=8", "scipy>=1.12", "torch==2.13.0", "transformers>=5.0,<6",
                             *NOTEBOOKS],
                    "notebooks": NOTEBOOKS},
    entry_points={"console_scripts": [
        "zoo-train=launch.train:main",
        "zoo-generate=launch.generate:main",
        "zoo-export=launch.export:export_main",
        "zoo-import=launch.export:import_main",
        "zoo-tpu=launch.tpu.pod:main",
    ]},
)
