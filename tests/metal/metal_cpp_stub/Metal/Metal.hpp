// A Linux stand-in for Apple's metal-cpp (<Metal/Metal.hpp>): declarations
// only, with metal-cpp's names and signatures, of what MLX's Metal headers
// and bindings/mlx/metal_eval.cpp mention. It lets tests/test_metal_host.py
// type-check the eval_gpu code against MLX's real headers with
// -fsyntax-only; nothing compiled against it is ever linked or run.
#pragma once

#include <cstdint>

namespace NS {
using UInteger = unsigned long;
using Integer = long;

template <class T>
class SharedPtr {
 public:
  T* get() const;
  T* operator->() const;
  explicit operator bool() const;
};

class Object {};
class String;
class Error;
class AutoreleasePool;
class Array;
enum StringEncoding : UInteger { ASCIIStringEncoding = 1, UTF8StringEncoding = 4 };
}  // namespace NS

namespace MTL {
struct Size {
  Size();
  Size(NS::UInteger width, NS::UInteger height, NS::UInteger depth);
  NS::UInteger width, height, depth;
};

enum DataType : NS::UInteger { DataTypeNone = 0 };

class Allocation {};
class Resource : public Allocation {};
class Buffer : public Resource {};
class Library {};
class Function {};
class LinkedFunctions {};
class Fence {};
class CommandQueue {};
class CommandBuffer {};
class ResidencySet {};
class Device {};

class ComputePipelineState {
 public:
  NS::UInteger maxTotalThreadsPerThreadgroup() const;
};

class ComputeCommandEncoder {
 public:
  void setComputePipelineState(const ComputePipelineState* state);
  void setBytes(const void* bytes, NS::UInteger length, NS::UInteger index);
  void setThreadgroupMemoryLength(NS::UInteger length, NS::UInteger index);
};
}  // namespace MTL
