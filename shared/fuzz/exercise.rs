// What the fuzz targets do with one input, shared with `shared/tests/fuzz_corpus.rs` (which
// replays the committed corpus as an ordinary test): `include!`d by both.
//
// Random mutations almost never carry a valid CRC, so every input is also tried with its CRC
// fixed up, which reaches the structural checks (and, for `parse_and_run`, the kernels).

/// `data` with the CRC at offset 12 recomputed over bytes 16 .. 32 + payload_len, when the
/// header's payload_len fits the data.
pub fn with_crc_fixed(data: &[u8]) -> Option<Vec<u8>> {
    let header = lepton_nn::format::HEADER_LEN;
    let payload_len = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?) as usize;
    let covered = data.get(16..header.checked_add(payload_len)?)?;
    let mut fixed = data.to_vec();
    fixed[12..16].copy_from_slice(&lepton_nn::format::crc32(covered).to_le_bytes());
    Some(fixed)
}

/// `Model::parse` returns a model or an error, never panics: on the bytes as they are and with
/// the CRC fixed.
pub fn parse_only(data: &[u8]) -> usize {
    let mut accepted = usize::from(lepton_nn::Model::parse(data).is_ok());
    if let Some(fixed) = with_crc_fixed(data) {
        accepted += usize::from(lepton_nn::Model::parse(&fixed).is_ok());
    }
    accepted
}

/// Every model `parse` accepts also plans (optimized and reference) and runs on a constant
/// input without panicking. Returns how many inputs ran.
pub fn parse_and_run(data: &[u8]) -> usize {
    let fixed = with_crc_fixed(data);
    [Some(data), fixed.as_deref()].into_iter().flatten().map(run_once).sum()
}

fn run_once(data: &[u8]) -> usize {
    let Ok(model) = lepton_nn::Model::parse(data) else { return 0 };
    let mut ran = 0;
    for optimized in [true, false] {
        let mut plan = Box::new(lepton_nn::Plan::new());
        let engine = if optimized { lepton_nn::Engine::new(model, &mut plan) } else { lepton_nn::Engine::reference(model, &mut plan) };
        let Ok(engine) = engine else { continue };
        if engine.arena_bytes() > 1 << 20 {
            continue;
        }
        let mut arena = vec![0u8; engine.arena_bytes()];
        let input = vec![-3i8; engine.input_range().len()];
        let _ = engine.run(&input, &mut arena, &mut lepton_nn::NoHook);
        ran += 1;
    }
    ran
}
