// The pruneext operator library: schemas only. Implementations register
// under their dispatch keys in cpu/ and cuda/; Python adds fake (meta)
// implementations in pruneext/ops.py so the ops trace under torch.compile.
#include <torch/library.h>

TORCH_LIBRARY(pruneext, m) {
  // Mask of one tensor: the k entries of smallest |scores| (among the entries
  // whose default_mask is 1 when among_alive) are set to 0; every other entry
  // keeps default_mask (1 where there is none). Ties go to the lowest flat
  // index; NaN is the largest magnitude. The result is contiguous, with
  // default_mask's dtype, else scores' dtype.
  //
  // Both are cudagraph_unsafe: the CUDA kernels sync once for the alive count
  // (among_alive with a default mask) and copy a list's descriptors from a
  // buffer that outlives the call but not a graph's replays, so torch.compile
  // keeps them out of CUDA graphs (and the CUDA backend refuses a capture).
  m.def(
      "l1_mask(Tensor scores, SymInt k, Tensor? default_mask=None, "
      "bool among_alive=False) -> Tensor",
      {at::Tag::cudagraph_unsafe});
  // The same selection over a list of tensors ranked together (global
  // pruning): ties go to the lowest list position, then the lowest flat index.
  m.def(
      "l1_mask_global(Tensor[] scores, SymInt k, Tensor?[] default_masks, "
      "bool among_alive=False) -> Tensor[]",
      {at::Tag::cudagraph_unsafe});
}
