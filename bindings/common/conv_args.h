// Pieces both nanobind modules share: Python (stride, padding, dilation)
// pairs into the core's ConvArgs, validation errors as ValueError, and the
// resolved geometry as a Python dict.
#pragma once
#include <nanobind/nanobind.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>

#include "dcn/params.h"

namespace dcn_bind {

namespace nb = nanobind;
using Pair = std::tuple<int64_t, int64_t>;

inline void fill_params(dcn::ConvArgs& args, Pair stride, Pair padding, Pair dilation) {
  args.stride[0] = std::get<0>(stride);
  args.stride[1] = std::get<1>(stride);
  args.padding[0] = std::get<0>(padding);
  args.padding[1] = std::get<1>(padding);
  args.dilation[0] = std::get<0>(dilation);
  args.dilation[1] = std::get<1>(dilation);
}

// std::invalid_argument reaches Python as ValueError.
inline dcn::Geometry resolve_or_throw(const dcn::ConvArgs& args) {
  dcn::Geometry g;
  const std::string err = dcn::resolve_geometry(args, &g);
  if (!err.empty()) throw std::invalid_argument(err);
  return g;
}

inline nb::dict geometry_dict(const dcn::Geometry& g) {
  nb::dict d;
  d["batch"] = g.batch;
  d["channels"] = g.channels;
  d["height"] = g.height;
  d["width"] = g.width;
  d["out_channels"] = g.out_channels;
  d["groups"] = g.groups;
  d["offset_groups"] = g.offset_groups;
  d["kernel"] = nb::make_tuple(g.kernel_h, g.kernel_w);
  d["out_size"] = nb::make_tuple(g.out_h, g.out_w);
  return d;
}

}  // namespace dcn_bind
