// nsa_choice.wgsl — composed into nsa.wgsl and nsa_decode.wgsl after topk.wgsl: what NSA's
// choice writes (docs/DESIGN.md §1), one rule for both: slot s of the list of a row whose
// position lies in block `own` holds own, own − 1, 0 (those that exist: `forced` of them),
// then the chosen blocks of `top` in rank order, NONE after.

const NONE: u32 = 0xffffffffu;

fn list_slot(s: u32, own: u32, forced: u32, top: ptr<function, TopK>) -> u32 {
    if s == 0u {
        return own;
    }
    if s == 1u && own >= 1u {
        return own - 1u;
    }
    if s == 2u && own >= 2u {
        return 0u;
    }
    if s >= forced && s - forced < (*top).count {
        return (*top).index[s - forced];
    }
    return NONE;
}
