// DCN_CLONES: build a function for AVX-512 and AVX2 as well as the baseline
// and pick one at load time (GCC's target_clones, an ifunc), flattening its
// callees into each clone so every clone runs its own ISA's code. Only where
// ifuncs work (x86-64 Linux, GCC) and not under ThreadSanitizer (whose
// runtime is not up yet when ifunc resolvers run) or -O0 builds; elsewhere
// the baseline alone. The clones' loops have no reductions across vector
// lanes, so every clone computes the same bits.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && \
    defined(__OPTIMIZE__) && !defined(__SANITIZE_THREAD__) && !defined(DCN_NO_AVX2)
#define DCN_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), flatten))
#else
#define DCN_CLONES __attribute__((flatten))
#endif
