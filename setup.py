"""Packaging lives in setup.cfg; this file only ships `kerasfix.pth`.

The `.pth` switches kerasfix on at interpreter start-up when `KERASFIX` asks
for it. It goes into every wheel, editable wheels (PEP 660) included, so pip
records it and removes it on uninstall.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "kerasfix.pth"


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            # An editable wheel drops build_lib; its files come from here.
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        here = os.path.dirname(os.path.abspath(__file__))
        self.copy_file(
            os.path.join(here, PTH), os.path.join(target, PTH), preserve_mode=0
        )


setup(cmdclass={"build_py": build_py_with_pth})
