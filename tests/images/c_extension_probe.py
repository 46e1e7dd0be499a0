"""Run inside the service image: compile a trivial C extension the way Triton compiles its launcher (its own
build function: the compiler it finds, the interpreter's Python.h, its cache directory), import it, call it."""

import sysconfig
from pathlib import Path

from triton.runtime import build

SOURCE = r"""
#include <Python.h>
static PyObject *answer(PyObject *self, PyObject *unused) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kvmemo_probe", NULL, -1, methods};
PyMODINIT_FUNC PyInit_kvmemo_probe(void) { return PyModule_Create(&module); }
"""

module = build.compile_module_from_src(SOURCE, "kvmemo_probe")
print(f"compiler={build._find_compiler('c')}")
print(f"python_h={Path(sysconfig.get_paths()['include'], 'Python.h')}")
print(f"module={module.__file__}")
print(f"answer={module.answer()}")
