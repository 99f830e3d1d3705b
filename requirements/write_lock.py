"""Print requirements/lock.txt for this environment: the exact version of every installed
package but zoo and the packaging tools, as pip constraints (`make lock` runs this after the
suite passed here).

Local version labels are dropped (torch 2.13.0+cpu -> 2.13.0): `==2.13.0` still takes the CPU
build where PyTorch's CPU index is given, and the lock installs where only PyPI is reachable.
"""

import importlib.metadata
import platform
import sys

SKIP = {"zoo", "pip", "setuptools", "wheel"}


def main() -> None:
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name not in SKIP:
            pins[name] = dist.version.split("+")[0]
    print(f"# The releases zoo's suite last passed on, as pip constraints (`pip install -c`);\n"
          f"# written by `make lock` on Python {platform.python_version()}, "
          f"{sys.platform} {platform.machine()}.")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
