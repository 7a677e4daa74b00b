//! How a split is stored in `claims.split` and `settlements.split`: the encoded
//! `yidi.v1.Split`, compressed (raw deflate) against a preset dictionary of the engine's
//! wording. Most of a split is the engine's trace, prose built from a few dozen phrases
//! that every split repeats; with the phrases known in advance, a split takes well
//! under half its encoded size, and every consumer still reads the same trace.
//!
//! A stored value starts with a zero byte and the dictionary's version, which no
//! encoded message starts with (field number 0 does not exist): rows written before
//! this format — a plain encoded split — are read as they are. A dictionary, once
//! released, never changes: another one is a new version, and both stay readable.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use prost::Message;
use yidi_common::proto;

use crate::{Error, Result};

/// First byte of a compressed split (never the first byte of an encoded message).
const MARK: u8 = 0;
/// The dictionary of version 1.
const V1: u8 = 1;

/// The engine's phrases as its trace and fund rows put them (common/src/engine),
/// with typical figures. Deflate finds repeats at short distances cheapest, so the
/// phrases of every split come last.
const DICT_V1: &str = "\
filing referral for 330100; ratio cut 10 pp; filing emergency → emergency rescue counts as filed; \
no filing → unfiled, settled as temporary; ratio cut 20 pp; \
filed resettled_retiree for ; filed posted_worker for ; \
visit in the home region : no cross-region rule\n\
deductible per visit: 800.00, first admission this year\n\
deductible per visit: 400.00, admission 2 this year\n\
no deductible for pharmacy visits\nno deductible for chronic visits\n\
pharmacy visits are not pooled under this policy: no fund pays\n\
; cap 300000.00 with 0.00 paid this year leaves 300000.00; annual cap \
; tier 0.00–100000.00 at 60% on \
large-amount subsidy hifob serious-illness insurance hifmi civil-servant subsidy cvlserv\n\
civil-servant subsidy 10% × in-scope personal share 0.00 = 0.00\n\
no civil-servant subsidy in this policy\n\
personal account pays 0.00 (balance 0.00, may pay 0.00) personal account acct\n\
personal account may not pay for inpatient visits under this policy\n\
B_OVER_PRICE_CAP OVER_PRICE_CAP C_OUT_OF_SCOPE B_FIRST_SELFPAY \
0.000.000.000.000.00\
policy 330100 employee \"杭州市职工基本医疗保险 2026\" in force from 2026-01-01; \
inpatient level-3 hospital, person retired (civil servant)\n\
policy 330200 resident \"宁波市城乡居民基本医疗保险 2026\" in force from 2026-01-01; \
outpatient level-2 hospital, person in_service\n\
pharmacy ungraded institution, person resident_adult resident_minor\n\
cross-region care in 330200 (home 330100): filed long_term_resident for 330200; no ratio cut\n\
bill 0.00: class C 0.00 + above price cap 0.00 + class-B first self-pay 0.00 + in scope 0.00\n\
annual outpatient deductible 200.00 for resident_elderly: 0.00 met before, 200.00 applied now\n\
ratio 65% (outpatient, level1, resident_elderly)\n\
pooled fund 65% × 0.00 = 0.00\n\
serious illness (hifmi): year-to-date in-scope personal share 0.00 → 0.00; below the first tier\n\
funds pay 0.00; personal share 0.00\n\
personal account may not pay for outpatient visits under this policy\n\
patient pays 0.00 in cash\n\
pooled fund 65% hifp";

fn dictionary(version: u8) -> Result<&'static [u8]> {
    match version {
        V1 => Ok(DICT_V1.as_bytes()),
        v => Err(Error::Internal(format!(
            "stored split written with dictionary {v}, unknown to this yidi"
        ))),
    }
}

/// One writer thread's compressor, kept between splits, and the last split it stored.
struct Encoder {
    deflate: Compress,
    /// The plain encoding and the stored form of the split compressed last.
    last: Option<(Vec<u8>, Vec<u8>)>,
}

thread_local! {
    static ENCODER: std::cell::RefCell<Encoder> = std::cell::RefCell::new(Encoder {
        deflate: Compress::new(LEVEL, false),
        last: None,
    });
}

/// Deflate's fastest level. On a split against the dictionary the higher levels save
/// little of its size for much more CPU (docs/performance.md has the figures), which the
/// writer thread — the one thread every job of a node waits for — pays.
const LEVEL: Compression = Compression::fast();

/// The stored form of `split`. The compressor and its buffers are reused by the thread
/// (a new one allocates and clears its hash tables for every split), and a split equal
/// to the one this thread stored last — a same-city settlement stores the same split as
/// its intent, its claim and its outcome in one job — is not compressed again.
pub fn encode(split: &proto::Split) -> Vec<u8> {
    let plain = split.encode_to_vec();
    ENCODER.with(|cell| {
        let Ok(mut enc) = cell.try_borrow_mut() else {
            return compress(&mut Compress::new(LEVEL, false), plain);
        };
        if let Some((last_plain, stored)) = &enc.last
            && *last_plain == plain
        {
            return stored.clone();
        }
        enc.deflate.reset();
        let stored = compress(&mut enc.deflate, plain.clone());
        enc.last = Some((plain, stored.clone()));
        stored
    })
}

/// Compresses `plain` with a fresh (or just reset) compressor.
fn compress(c: &mut Compress, plain: Vec<u8>) -> Vec<u8> {
    // Both steps fail only on a misuse of the API (a dictionary after data, a full
    // buffer): the plain encoding is always a valid stored value.
    if c.set_dictionary(DICT_V1.as_bytes()).is_err() {
        return plain;
    }
    // Raw deflate never grows a small input by more than a few bytes per 16 KiB block.
    let mut out = Vec::with_capacity(plain.len() + plain.len() / 8 + 64);
    out.extend_from_slice(&[MARK, V1]);
    match c.compress_vec(&plain, &mut out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) if out.len() < plain.len() => out,
        _ => plain,
    }
}

/// Reads a stored split (either form).
pub fn decode(stored: &[u8]) -> Result<proto::Split> {
    let bad = |e: String| Error::Internal(format!("stored split is unreadable: {e}"));
    let plain;
    let bytes = match stored {
        [MARK, version, deflated @ ..] => {
            let mut d = Decompress::new(false);
            d.set_dictionary(dictionary(*version)?)
                .map_err(|e| bad(e.to_string()))?;
            let mut out = Vec::with_capacity(deflated.len() * 4 + 64);
            loop {
                let before = d.total_in();
                let status = d
                    .decompress_vec(
                        &deflated[usize::try_from(before).unwrap_or(usize::MAX)..],
                        &mut out,
                        FlushDecompress::Finish,
                    )
                    .map_err(|e| bad(e.to_string()))?;
                match status {
                    Status::StreamEnd => break,
                    _ if out.len() == out.capacity() => out.reserve(out.capacity()),
                    _ if d.total_in() == before => {
                        return Err(bad("deflate stream cut short".into()));
                    }
                    _ => {}
                }
            }
            plain = out;
            plain.as_slice()
        }
        _ => stored,
    };
    proto::Split::decode(bytes).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split() -> proto::Split {
        proto::Split {
            medfee_sumamt: "2211.83".into(),
            fund_pay_sumamt: "1295.49".into(),
            psn_cash_pay: "916.34".into(),
            funds: vec![proto::FundPayment {
                fund: "hifp".into(),
                amount: "1295.49".into(),
                description: "pooled fund 65%".into(),
            }],
            lines: vec![proto::LineSplit {
                line_no: "1".into(),
                amount: "2211.83".into(),
                reason: "B_FIRST_SELFPAY".into(),
                ..Default::default()
            }],
            trace: vec![
                "policy 330100 resident \"杭州市城乡居民基本医疗保险 2026 (demo)\" in force from 2026-01-01; outpatient level-1 hospital, person resident_elderly".into(),
                "cross-region care in 330200 (home 330100): filed long_term_resident for 330200; no ratio cut".into(),
                "bill 2211.83: class C 0.00 + above price cap 0.00 + class-B first self-pay 18.77 + in scope 2193.06".into(),
                "annual outpatient deductible 200.00 for resident_elderly: 0.00 met before, 200.00 applied now".into(),
                "ratio 65% (outpatient, level1, resident_elderly)".into(),
                "pooled fund 65% × 1993.06 = 1295.49".into(),
                "funds pay 1295.49; personal share 916.34".into(),
                "patient pays 916.34 in cash".into(),
            ],
            ..Default::default()
        }
    }

    /// The compressor a thread keeps is reset between splits, and a split equal to the
    /// last one gets the same stored form: in any order, every split is stored
    /// compressed and reads back as itself.
    #[test]
    fn a_reused_compressor_stores_each_split_compressed_and_exact() {
        let a = split();
        let mut b = split();
        b.psn_cash_pay = "916.35".into();
        b.trace
            .push("a phrase the dictionary does not know, twice: 甲乙丙 甲乙丙".into());
        let fresh =
            |s: &proto::Split| compress(&mut Compress::new(LEVEL, false), s.encode_to_vec());
        for s in [&a, &a, &b, &a, &b, &b, &proto::Split::default(), &a] {
            let stored = encode(s);
            assert_eq!(stored, fresh(s), "the same bytes as a new compressor's");
            if *s != proto::Split::default() {
                assert_eq!(stored[..2], [MARK, V1]);
            }
            assert_eq!(&decode(&stored).unwrap(), s);
        }
    }

    /// A split comes back equal, trace and all, in well under half its encoded size;
    /// a row in the earlier form (the plain encoding) reads as before; a damaged or
    /// unknown stored value is an error, never another split.
    #[test]
    fn splits_round_trip_compressed_and_old_rows_still_read() {
        let s = split();
        let plain = s.encode_to_vec();
        let stored = encode(&s);
        assert_eq!(stored[..2], [MARK, V1]);
        assert!(
            stored.len() * 2 < plain.len(),
            "{} of {}",
            stored.len(),
            plain.len()
        );
        assert_eq!(decode(&stored).unwrap(), s);
        assert_eq!(decode(&plain).unwrap(), s, "a row of the earlier form");
        assert_eq!(
            decode(&encode(&proto::Split::default())).unwrap(),
            proto::Split::default()
        );
        let cut = &stored[..stored.len() - 4];
        assert!(decode(cut).is_err());
        let mut unknown = stored.clone();
        unknown[1] = 9;
        let e = decode(&unknown).unwrap_err().to_string();
        assert!(e.contains("dictionary 9"), "{e}");
    }
}
