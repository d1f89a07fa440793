"""Build hooks: compile the Cython kernels in ext/ and generate the gRPC modules from protos/."""

from __future__ import annotations

import pathlib
from typing import ClassVar

import numpy as np
from Cython.Build import cythonize
from setuptools import Command, Extension, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

ROOT = pathlib.Path(__file__).parent.resolve()
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "src"


class BuildProtos(Command):
    """Generate heliostat/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py with grpcio-tools."""

    description = "generate protobuf and gRPC modules from protos/"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        import grpc_tools
        from grpc_tools import protoc

        protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
        include = str(pathlib.Path(grpc_tools.__file__).parent / "_proto")
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={OUT_DIR}",
            f"--pyi_out={OUT_DIR}",
            f"--grpc_python_out={OUT_DIR}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on " + " ".join(protos))


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        self.run_command("build_protos")
        super().run()


class DevelopWithProtos(develop):
    def run(self) -> None:
        self.run_command("build_protos")
        super().run()


extensions = [
    Extension(
        "heliostat.imaging._openjpeg",
        ["ext/openjpeg.pyx"],
        include_dirs=[np.get_include(), "/usr/include/openjpeg-2.5"],
        libraries=["openjp2"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    ),
    Extension(
        "heliostat.imaging._simd",
        ["ext/simd.pyx"],
        include_dirs=["ext"],
        depends=["ext/bilinear_row.h", "ext/separable_row.h"],
        extra_compile_args=["-O3"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level="3",
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
    cmdclass={
        "build_protos": BuildProtos,
        "build_py": BuildPyWithProtos,
        "develop": DevelopWithProtos,
    },
)
