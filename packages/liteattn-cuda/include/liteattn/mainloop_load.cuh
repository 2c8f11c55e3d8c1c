// Producer: one thread of the producer warpgroup walks the keep bitmask of each work tile and TMA-loads its Q,
// then the K and V tiles of every kept key tile, into a ring of kStages smem stages shared by all work tiles.
#pragma once

#include "kernel_traits.cuh"
#include "tile_scheduler.cuh"

namespace liteattn {

// One work tile. `state` is the ring position, carried from tile to tile; `q_round` counts the tiles whose Q was
// loaded before this one (tiles with no kept key tile load nothing). Returns whether Q was loaded.
template <class Traits, class Params, class PipelineState, class TileIterator>
CUTE_DEVICE bool producer_load(Params const& params, typename Traits::SharedStorage& shared, WorkTile const& work,
                               typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                               TileIterator tiles, int num_kept, PipelineState& state, int q_round) {
  if (num_kept == 0) return false;  // consumers write zeros / -inf without waiting on anything

  Tensor sQ = make_tensor(make_smem_ptr(shared.smem_q.data()), typename Traits::SmemLayoutQ{});  // (BM, D)
  Tensor sK = make_tensor(make_smem_ptr(shared.smem_k.data()), typename Traits::SmemLayoutK{});  // (BN, D, stage)
  Tensor sV = make_tensor(make_smem_ptr(shared.smem_v.data()), typename Traits::SmemLayoutV{});  // (BN, D, stage)

  int const head_kv = work.head / params.head_ratio;
  Tensor mQ = params.tma_q.get_tma_tensor(params.shape_q);                       // (Sq, D, H, B)
  Tensor mK = params.tma_k.get_tma_tensor(params.shape_k);                       // (Sk, D, Hkv, B)
  Tensor mV = params.tma_v.get_tma_tensor(params.shape_k);                       // (Sk, D, Hkv, B)
  auto tile_q = select<0, 2>(typename Traits::TileShapeMNK{});
  auto tile_kv = select<1, 2>(typename Traits::TileShapeMNK{});
  Tensor gQ = local_tile(mQ(_, _, work.head, work.batch), tile_q, make_coord(work.m_block, _0{}));  // (BM, D)
  Tensor gK = local_tile(mK(_, _, head_kv, work.batch), tile_kv, make_coord(_, _0{}));           // (BN, D, KT)
  Tensor gV = local_tile(mV(_, _, head_kv, work.batch), tile_kv, make_coord(_, _0{}));           // (BN, D, KT)

  auto [tQgQ, tQsQ] = tma_partition(params.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
  auto [tKgK, tKsK] = tma_partition(params.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
  auto [tVgV, tVsV] = tma_partition(params.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));

  // Q has one buffer: wait until every consumer thread finished the previous tile's last QK^T (barrier_q_empty),
  // then arm barrier_q (phase q_round) with Q's byte count. Meanwhile the consumers run the previous epilogue.
  if (q_round > 0) shared.barrier_q_empty.wait((q_round - 1) & 1);
  shared.barrier_q.arrive_and_expect_tx(Traits::kTmaBytesQ);
  copy(params.tma_q.with(reinterpret_cast<uint64_t&>(shared.barrier_q), 0), tQgQ, tQsQ);

  // K/V ring: producer_acquire waits until both consumer warpgroups released the stage (empty barrier),
  // then arms the full barrier with the stage's byte count; consumers wait on the full barrier.
  auto load_k = [&, &tKgK = tKgK, &tKsK = tKsK](int n, PipelineState const& at) {  // C++17: bindings by init-capture
    pipeline_k.producer_acquire(at);
    if constexpr (flat_loop<Traits>()) {
      // The partial last key tile from its padded copy (KernelParams::key_pad_tile): the flat loop masks nothing.
      if (params.key_pad > 0 && n == params.num_k_tiles - 1) {
        Tensor mKpad = params.tma_k_pad.get_tma_tensor(make_shape(int32_t(Traits::kBlockN), int32_t(Traits::kHeadDim),
                                                                  get<2>(params.shape_k), get<3>(params.shape_k)));
        Tensor gKpad = local_tile(mKpad(_, _, head_kv, work.batch), tile_kv, make_coord(_0{}, _0{}));  // (BN, D)
        auto [tKgKpad, tKsKpad] = tma_partition(params.tma_k_pad, _0{}, Layout<_1>{}, group_modes<0, 2>(sK),
                                                group_modes<0, 2>(gKpad));
        copy(params.tma_k_pad.with(*pipeline_k.producer_get_barrier(at), 0), tKgKpad, tKsKpad(_, at.index()));
        return;
      }
    }
    copy(params.tma_k.with(*pipeline_k.producer_get_barrier(at), 0), tKgK(_, n), tKsK(_, at.index()));
  };
  auto load_v = [&, &tVgV = tVgV, &tVsV = tVsV](int n, PipelineState const& at) {
    pipeline_v.producer_acquire(at);
    copy(params.tma_v.with(*pipeline_v.producer_get_barrier(at), 0), tVgV(_, n), tVsV(_, at.index()));
  };
  if constexpr (overlapped_loop<Traits>()) {
    // The consumers issue S(n) with PV(previous kept tile): load in that order, K one kept tile ahead of V, so
    // that a K load never queues behind a V stage the consumers release only at the end of an iteration.
    auto state_v = state;
    int prev = -1;
    for (int n = tiles.next(); n >= 0; n = tiles.next()) {
      load_k(n, state);
      ++state;
      if (prev >= 0) {
        load_v(prev, state_v);
        ++state_v;
      }
      prev = n;
    }
    load_v(prev, state_v);  // at least one kept tile: prev >= 0; both positions now agree again
  } else {
    for (int n = tiles.next(); n >= 0; n = tiles.next()) {
      load_k(n, state);
      load_v(n, state);
      ++state;
    }
  }
  return true;
}

}  // namespace liteattn
