// topk.wgsl — composed into selection.wgsl and nsa.wgsl: a query's running top list, kept by
// insertion — the learned-sparse choices' ranking rule in one place (docs/DESIGN.md §1):
// descending score; an entry enters only with a strictly higher score than the kept entry it
// would pass, so among equal scores the one offered first (the lower block) stays ahead.
// MAX_TOPK is the variant's constant.

struct TopK {
    score: array<f32, MAX_TOPK>,
    index: array<u32, MAX_TOPK>,
    count: u32,
}

// Offers `index` with `score` to `top`, which keeps at most `want` (≥ 1) entries.
fn offer(top: ptr<function, TopK>, want: u32, score: f32, index: u32) {
    if (*top).count == want && score <= (*top).score[want - 1u] {
        return;
    }
    // the new entry's slot: past every kept score at least as high (ties stay ahead)
    var at = min((*top).count, want - 1u);
    loop {
        if at == 0u || (*top).score[at - 1u] >= score {
            break;
        }
        (*top).score[at] = (*top).score[at - 1u];
        (*top).index[at] = (*top).index[at - 1u];
        at -= 1u;
    }
    (*top).score[at] = score;
    (*top).index[at] = index;
    (*top).count = min((*top).count + 1u, want);
}
