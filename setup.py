from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["shellm", "shellm.*"]) + ["twisted.plugins"],
    # A plain path entry for editable installs: twistd finds plugins by
    # scanning sys.path for twisted/plugins folders, which an import-hook
    # editable install would hide.
    package_dir={"": "."},
)
