"""Ship the top-level conf/ inside the wheel as resexp/conf, so a non-editable install finds it."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:  # an editable install reads conf/ from the checkout
            shutil.copytree(Path(__file__).parent / "conf", Path(self.build_lib) / "resexp" / "conf",
                            dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithConf})
