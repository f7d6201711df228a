// The pruneext operator library: schemas only. Implementations register
// under their dispatch keys in cpu/ and cuda/; Python adds fake (meta)
// implementations in pruneext/backends/native.py so the ops trace under
// torch.compile, and routes calls to them in pruneext/ops.py (how a call
// finds its kernel: pruneext/backends/README.md).
#include <torch/library.h>

TORCH_LIBRARY(pruneext, m) {
  // Mask of one tensor: the k entries of smallest |scores| (among the entries
  // whose default_mask is 1 when among_alive) are set to 0; every other entry
  // keeps default_mask (1 where there is none). Ties go to the lowest flat
  // index; NaN is the largest magnitude. The result is contiguous, with
  // default_mask's dtype, else scores' dtype.
  //
  // values_out (optional): written by the same pass as the mask with
  // mask * values, the product taken in values' dtype (values: the scores
  // when None) -- bit for bit torch's `mask.to(values.dtype) * values`, so
  // a pruned entry holds value * 0 (+-0, or NaN for an inf or NaN value).
  // It is the caller's tensor: same shape, dtype and device as values,
  // contiguous, sharing no memory with scores, values or default_mask; a
  // default mask must then have values' dtype. values are float32, float64,
  // float16 or bfloat16. Every check runs before anything is written. This
  // is how l1_unstructured commits `module.<name>` without torch's second
  // pass (apply_mask); global_unstructured takes l1_mask_global.into.
  //
  // Both are cudagraph_unsafe: the CUDA kernels sync once for the alive count
  // (among_alive with a default mask) and copy a list's descriptors from a
  // buffer that outlives the call but not a graph's replays, so torch.compile
  // keeps them out of CUDA graphs (and the CUDA backend refuses a capture).
  m.def(
      "l1_mask(Tensor scores, SymInt k, Tensor? default_mask=None, "
      "bool among_alive=False, Tensor? values=None, Tensor(a!)? values_out=None) -> Tensor",
      {at::Tag::cudagraph_unsafe});
  // The same selection over a list of tensors ranked together (global
  // pruning): ties go to the lowest list position, then the lowest flat index.
  m.def(
      "l1_mask_global(Tensor[] scores, SymInt k, Tensor?[] default_masks, "
      "bool among_alive=False) -> Tensor[]",
      {at::Tag::cudagraph_unsafe});
  // The same, with every output a parameter: masks[j] gets what
  // l1_mask_global returns (its shape and dtype; contiguous), values_out[j]
  // (optional, as l1_mask's) mask * values[j] (values None: the scores).
  // An op that writes into tensors it is given cannot return a list too:
  // torch.compile functionalizes such an op only when it returns tensors
  // (auto_functionalize), so the global op's outputs-as-parameters form is
  // this overload rather than trailing arguments of the first.
  m.def(
      "l1_mask_global.into(Tensor[] scores, SymInt k, Tensor?[] default_masks, "
      "bool among_alive, Tensor(a!)[] masks, Tensor[]? values=None, "
      "Tensor(b!)[]? values_out=None) -> ()",
      {at::Tag::cudagraph_unsafe});

  // The same selection within groups (the row and N:M scopes): scores'
  // flat entries split into groups of group_size consecutive ones (a row of
  // the 2-D view: group_size = its length; N:M: group_size = M), and every
  // group gets its own k -- group_k[g] where given (int64, one per group, on
  // the scores' device; values clamped to [0, group_size]), else k. In
  // group g, the entries that can be pruned are all of them, or with
  // among_alive those whose default mask is 1; the others count as pruned
  // already, so k_g - (their number) of the alive ones are pruned, those of
  // smallest key, ties to the lowest index (none when the group already
  // has k_g pruned). A group therefore ends with at least k_g entries
  // pruned, which is what N:M asks for on a mask pruned before. The result
  // is the default mask (1 where there is none) with those entries set to
  // 0, contiguous, of the default mask's dtype, else the scores'. The
  // number of entries must be a multiple of group_size >= 1, and 0 <= k <=
  // group_size (ValueError otherwise).
  m.def(
      "l1_mask_grouped(Tensor scores, SymInt group_size, SymInt k, Tensor? default_mask=None, "
      "bool among_alive=False, Tensor? group_k=None) -> Tensor");

  // The phases of the same selection, for a driver that runs the passes
  // itself (pruneext/select_loop.py), e.g. with the histograms summed
  // across processes. Over a list of tensors as l1_mask_global; an entry is
  // alive unless among_alive and its default mask is not 1. key(x) is the
  // magnitude key of magnitude_key.h, of W bits (float32 31, float64 63,
  // float16 / bfloat16 15).
  //
  // Histogram of one radix digit: bin d counts the alive entries with
  // (key >> (shift + bits)) == prefix and ((key >> shift) & (2^bits - 1)) == d.
  // 1 <= bits <= 16, shift >= 0, shift + bits <= W. int64, 2^bits bins.
  m.def(
      "l1_key_histogram(Tensor[] scores, Tensor?[] default_masks, bool among_alive, "
      "int shift, int bits, SymInt prefix) -> Tensor");
  // Per tensor of the list: its alive entries whose key equals threshold
  // (int64, one count per tensor).
  m.def(
      "l1_count_equal(Tensor[] scores, Tensor?[] default_masks, bool among_alive, "
      "SymInt threshold) -> Tensor");
  // The masks for threshold key T and per-tensor tie budgets: the default
  // mask (1 where there is none) with every alive entry of key < T set to 0
  // and, in tensor j, the first ties[j] alive entries (flat order) of key ==
  // T (all of them where there are fewer). ties[j] >= 0. Dtypes as
  // l1_mask_global.
  m.def(
      "l1_mask_write(Tensor[] scores, Tensor?[] default_masks, bool among_alive, "
      "SymInt threshold, SymInt[] ties) -> Tensor[]");

  // The threshold of the fused select without its write, for a driver in
  // one process (select_loop) that writes the masks itself: int64 [T,
  // below, equal, equal_0, ..., equal_{n-1}], the k-th smallest alive key T,
  // the alive entries of key < T, those of key == T, and those of key == T
  // in each tensor where k splits them (0 < k - below < equal), else 0: only
  // a split needs them (otherwise each tensor's budget is all of its ties
  // or none), and they cost a pass where the select kept no candidates.
  // All 0 for k = 0. k must not exceed the alive entries. Only some
  // backends have it (the driver runs the histogram passes elsewhere).
  m.def(
      "l1_select_threshold(Tensor[] scores, Tensor?[] default_masks, bool among_alive, "
      "SymInt k) -> Tensor");

  // Lean training (pruneext.MagnitudePruner): masks packed to bits, one
  // contiguous uint8 tensor per tensor of ceil(numel / 8) bytes; entry e is
  // alive iff bit (e & 7) of byte (e >> 3) is 1 (numpy's little bit order;
  // the bits past numel are ignored and left as they are).
  //
  // Prune in place, by the phases' threshold key T (of the weights' own
  // magnitudes) and tie budgets: in weights[j], every alive entry of key < T
  // and the first ties[j] alive entries (flat order) of key == T (all of
  // them where there are fewer) get bit 0 and the value +0. ties[j] >= 0.
  // The weights share one floating dtype (float32, float64, float16,
  // bfloat16) and one device with the bits. Returns how many entries each
  // tensor had pruned by this call (int64, on the weights' device).
  //
  // Both are cudagraph_unsafe, as the mask ops: the CUDA backend uploads a
  // list's descriptors to a buffer that outlives the call but not a graph's
  // replays.
  m.def(
      "l1_bits_prune(Tensor(a!)[] weights, Tensor(b!)[] bits, SymInt threshold, "
      "SymInt[] ties) -> Tensor",
      {at::Tag::cudagraph_unsafe});
  // Zero, in place, every entry of tensors[j] whose bit in bits[j] is 0,
  // leaving the alive ones unwritten: the re-masking after an optimizer
  // step and of gradients. One floating dtype and one device for the list.
  m.def("l1_bits_apply(Tensor(a!)[] tensors, Tensor[] bits) -> ()", {at::Tag::cudagraph_unsafe});
}
