// Removes the MSL keyword macros of metal_shim.h, so host code (std::thread,
// ...) can follow the kernels in the same translation unit.
#undef kernel
#undef device
#undef thread
#undef threadgroup
#undef constant
