// `import pruneext._C` loads the operator library, which runs its
// TORCH_LIBRARY registrations; the Python module itself has no functions.
// (The CMake build for LibTorch users leaves this file out.)
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "pruneext operator library", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
