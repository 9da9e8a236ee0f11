//! Opening `CiphertextForRecipient` inside an enclave.
//!
//! AWS KMS (and Cloister's key service) answer a request made with a `Recipient` with a CMS
//! (RFC 5652) ContentInfo of type envelopedData: one KeyTransRecipientInfo whose content key is
//! wrapped with RSAES-OAEP (SHA-256, MGF1-SHA-256), and the content encrypted with AES-256-CBC.
//! AWS emits BER (indefinite lengths, constructed and chunked OCTET STRINGs), Cloister emits
//! DER; [`open_ciphertext_for_recipient`] accepts both through a small bounded BER reader that
//! never panics, caps nesting at [`MAX_DEPTH`] and input at [`MAX_CMS_LEN`], and allocates only
//! in proportion to its (capped) input.

use aws_lc_rs::cipher::{PaddedBlockDecryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256};
use const_oid::db::{rfc5911, rfc5912};
use thiserror::Error;
use zeroize::Zeroizing;

/// Largest CMS blob accepted.
pub const MAX_CMS_LEN: usize = 1 << 20;
/// Deepest nesting of constructed values accepted.
pub const MAX_DEPTH: usize = 16;

/// Errors opening a CiphertextForRecipient.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecipientError {
    /// The input is larger than [`MAX_CMS_LEN`].
    #[error("CMS blob is larger than {MAX_CMS_LEN} bytes")]
    TooLarge,
    /// The BER encoding is malformed.
    #[error("malformed BER at offset {0}: {1}")]
    Ber(usize, &'static str),
    /// The structure is valid BER but not the expected CMS.
    #[error("unexpected CMS structure: {0}")]
    Structure(&'static str),
    /// An algorithm other than RSAES-OAEP-SHA256 / AES-256-CBC.
    #[error("unsupported algorithm: {0}")]
    Algorithm(&'static str),
    /// The private key is not a usable RSA PKCS#8 key.
    #[error("the private key is not an RSA PKCS#8 key")]
    PrivateKey,
    /// Unwrapping the content key or decrypting the content failed.
    #[error("decryption failed: {0}")]
    Decrypt(&'static str),
}

type Result<T> = std::result::Result<T, RecipientError>;

/// One parsed BER element.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    /// Contents; for an indefinite-length value, everything up to its end-of-contents marker.
    content: &'a [u8],
    /// Offset of the contents in the whole input (for errors).
    offset: usize,
}

impl Tlv<'_> {
    fn constructed(&self) -> bool {
        self.tag & 0x20 != 0
    }
}

/// A bounded BER reader over a slice.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    base: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], base: usize, depth: usize) -> Result<Self> {
        if depth > MAX_DEPTH {
            return Err(RecipientError::Ber(base, "nesting too deep"));
        }
        Ok(Self {
            data,
            pos: 0,
            base,
            depth,
        })
    }

    fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn err(&self, msg: &'static str) -> RecipientError {
        RecipientError::Ber(self.base + self.pos, msg)
    }

    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| self.err("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads the next element (an end-of-contents marker is returned as tag 0, empty content).
    fn next(&mut self) -> Result<Tlv<'a>> {
        let tag = self.byte()?;
        if tag & 0x1f == 0x1f {
            return Err(self.err("high tag numbers are not used in CMS"));
        }
        let first = self.byte()?;
        if first == 0x80 {
            // Indefinite length: only for constructed values; find the matching end marker.
            if tag & 0x20 == 0 {
                return Err(self.err("indefinite length on a primitive value"));
            }
            let start = self.pos;
            let mut inner = Reader::new(&self.data[start..], self.base + start, self.depth + 1)?;
            loop {
                let t = inner.next()?;
                if t.tag == 0 && t.content.is_empty() {
                    break;
                }
            }
            let end_of_content = start + inner.pos - 2;
            self.pos = start + inner.pos;
            return Ok(Tlv {
                tag,
                content: &self.data[start..end_of_content],
                offset: self.base + start,
            });
        }
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n > 4 {
                return Err(self.err("length too large"));
            }
            let mut len = 0usize;
            for _ in 0..n {
                len = (len << 8) | usize::from(self.byte()?);
            }
            len
        };
        let start = self.pos;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| self.err("length past the end"))?;
        if tag == 0 && len != 0 {
            return Err(self.err("end-of-contents with a length"));
        }
        self.pos = end;
        Ok(Tlv {
            tag,
            content: &self.data[start..end],
            offset: self.base + start,
        })
    }

    /// Reads the next element and checks its tag number and class (constructed bit ignored for
    /// the string types, which BER may chunk).
    fn expect(&mut self, tag: u8, what: &'static str) -> Result<Tlv<'a>> {
        let t = self.next()?;
        if t.tag != tag {
            return Err(RecipientError::Structure(what));
        }
        Ok(t)
    }

    fn children(&self, t: &Tlv<'a>) -> Result<Reader<'a>> {
        if !t.constructed() {
            return Err(RecipientError::Structure("expected a constructed value"));
        }
        Reader::new(t.content, t.offset, self.depth + 1)
    }
}

/// Contents of an OCTET STRING (tag `prim` when primitive), concatenating BER chunks.
fn octets(t: &Tlv<'_>, prim: u8, depth: usize, out: &mut Vec<u8>) -> Result<()> {
    if t.tag == prim {
        out.extend_from_slice(t.content);
        return Ok(());
    }
    if t.tag != (prim | 0x20) {
        return Err(RecipientError::Structure("expected an OCTET STRING"));
    }
    let mut r = Reader::new(t.content, t.offset, depth + 1)?;
    while !r.at_end() {
        let c = r.next()?;
        if c.tag == 0 && c.content.is_empty() {
            break;
        }
        // Chunks of a constructed string are OCTET STRINGs (universal tag 4).
        octets(&c, 0x04, depth + 1, out)?;
    }
    Ok(())
}

fn oid<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<&'a [u8]> {
    Ok(r.expect(0x06, what)?.content)
}

/// Checks RSAES-OAEP parameters name SHA-256 and MGF1-SHA-256.
fn check_oaep_params(r: &Reader<'_>, params: &Tlv<'_>) -> Result<()> {
    let mut p = r.children(params)?;
    let mut hash_ok = false;
    let mut mgf_ok = false;
    while !p.at_end() {
        let field = p.next()?;
        match field.tag {
            0xa0 => {
                let mut inner = p.children(&field)?;
                let alg = inner.expect(0x30, "OAEP hash AlgorithmIdentifier")?;
                let mut a = inner.children(&alg)?;
                hash_ok = oid(&mut a, "OAEP hash OID")? == rfc5912::ID_SHA_256.as_bytes();
            }
            0xa1 => {
                let mut inner = p.children(&field)?;
                let alg = inner.expect(0x30, "OAEP MGF AlgorithmIdentifier")?;
                let mut a = inner.children(&alg)?;
                if oid(&mut a, "MGF OID")? != rfc5912::ID_MGF_1.as_bytes() {
                    return Err(RecipientError::Algorithm("mask generation is not MGF1"));
                }
                let h = a.expect(0x30, "MGF1 hash AlgorithmIdentifier")?;
                let mut hh = a.children(&h)?;
                mgf_ok = oid(&mut hh, "MGF1 hash OID")? == rfc5912::ID_SHA_256.as_bytes();
            }
            0xa2 => {} // pSourceAlgorithm: only the empty label is produced by KMS.
            _ => return Err(RecipientError::Structure("unknown RSAES-OAEP parameter")),
        }
    }
    if !hash_ok || !mgf_ok {
        return Err(RecipientError::Algorithm(
            "RSAES-OAEP must use SHA-256 and MGF1-SHA-256",
        ));
    }
    Ok(())
}

/// Opens a `CiphertextForRecipient` with the enclave's RSA private key (PKCS#8 DER) and returns
/// the plaintext (the data key, private key or random bytes KMS released).
pub fn open_ciphertext_for_recipient(
    cms: &[u8],
    private_key_pkcs8: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    if cms.len() > MAX_CMS_LEN {
        return Err(RecipientError::TooLarge);
    }
    let parsed = parse(cms)?;
    let key = PrivateDecryptingKey::from_pkcs8(private_key_pkcs8)
        .map_err(|_| RecipientError::PrivateKey)?;
    let key = OaepPrivateDecryptingKey::new(key).map_err(|_| RecipientError::PrivateKey)?;
    let mut cek = Zeroizing::new(vec![0u8; key.min_output_size()]);
    let n = key
        .decrypt(&OAEP_SHA256_MGF1SHA256, &parsed.wrapped_key, &mut cek, None)
        .map_err(|_| RecipientError::Decrypt("the content key does not unwrap with this key"))?
        .len();
    if n != 32 {
        return Err(RecipientError::Decrypt("the content key is not 32 bytes"));
    }
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&parsed.iv);
    let dec = PaddedBlockDecryptingKey::cbc_pkcs7(
        UnboundCipherKey::new(&AES_256, &cek[..32])
            .map_err(|_| RecipientError::Decrypt("content key"))?,
    )
    .map_err(|_| RecipientError::Decrypt("content key"))?;
    let mut buf = Zeroizing::new(parsed.content);
    if buf.is_empty() || buf.len() % 16 != 0 {
        return Err(RecipientError::Decrypt("content is not whole AES blocks"));
    }
    let len = dec
        .decrypt(
            &mut buf,
            aws_lc_rs::cipher::DecryptionContext::Iv128(iv.into()),
        )
        .map_err(|_| RecipientError::Decrypt("content does not decrypt (bad padding)"))?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// The parts of an EnvelopedData needed to open it.
#[derive(Debug)]
pub struct ParsedEnvelope {
    /// RSAES-OAEP-wrapped content-encryption key.
    pub wrapped_key: Vec<u8>,
    /// AES-256-CBC IV.
    pub iv: [u8; 16],
    /// Encrypted content.
    pub content: Vec<u8>,
}

/// Parses (without decrypting) a CMS EnvelopedData as KMS emits it, in BER or DER.
pub fn parse(cms: &[u8]) -> Result<ParsedEnvelope> {
    if cms.len() > MAX_CMS_LEN {
        return Err(RecipientError::TooLarge);
    }
    let mut top = Reader::new(cms, 0, 0)?;
    let ci = top.expect(0x30, "ContentInfo")?;
    let mut ci_r = top.children(&ci)?;
    if oid(&mut ci_r, "contentType")? != rfc5911::ID_ENVELOPED_DATA.as_bytes() {
        return Err(RecipientError::Structure(
            "content type is not envelopedData",
        ));
    }
    let explicit = ci_r.expect(0xa0, "[0] content")?;
    let mut ex = ci_r.children(&explicit)?;
    let ed = ex.expect(0x30, "EnvelopedData")?;
    let mut ed_r = ex.children(&ed)?;
    ed_r.expect(0x02, "EnvelopedData version")?;
    let mut next = ed_r.next()?;
    if next.tag == 0xa0 {
        // originatorInfo: skipped.
        next = ed_r.next()?;
    }
    if next.tag != 0x31 {
        return Err(RecipientError::Structure("recipientInfos"));
    }
    let mut ris = ed_r.children(&next)?;
    let mut wrapped = None;
    while !ris.at_end() {
        let ri = ris.next()?;
        if ri.tag == 0 && ri.content.is_empty() {
            break;
        }
        if ri.tag != 0x30 {
            continue; // other RecipientInfo kinds ([1] kari, [2] kekri, ...)
        }
        if wrapped.is_some() {
            return Err(RecipientError::Structure(
                "more than one KeyTransRecipientInfo",
            ));
        }
        let mut k = ris.children(&ri)?;
        k.expect(0x02, "KeyTransRecipientInfo version")?;
        let _rid = k.next()?;
        let alg = k.expect(0x30, "keyEncryptionAlgorithm")?;
        let mut a = k.children(&alg)?;
        if oid(&mut a, "keyEncryptionAlgorithm OID")? != rfc5912::ID_RSAES_OAEP.as_bytes() {
            return Err(RecipientError::Algorithm(
                "key encryption is not RSAES-OAEP",
            ));
        }
        if a.at_end() {
            return Err(RecipientError::Algorithm(
                "RSAES-OAEP without parameters means SHA-1",
            ));
        }
        let params = a.expect(0x30, "RSAES-OAEP-params")?;
        check_oaep_params(&a, &params)?;
        let ek = k.next()?;
        let mut out = Vec::new();
        octets(&ek, 0x04, k.depth, &mut out)?;
        wrapped = Some(out);
    }
    let wrapped_key = wrapped.ok_or(RecipientError::Structure("no KeyTransRecipientInfo"))?;
    let eci = ed_r.expect(0x30, "EncryptedContentInfo")?;
    let mut e = ed_r.children(&eci)?;
    oid(&mut e, "encrypted content type")?;
    let cea = e.expect(0x30, "contentEncryptionAlgorithm")?;
    let mut c = e.children(&cea)?;
    if oid(&mut c, "content encryption OID")? != rfc5911::ID_AES_256_CBC.as_bytes() {
        return Err(RecipientError::Algorithm(
            "content encryption is not AES-256-CBC",
        ));
    }
    let iv_t = c.next()?;
    let mut iv_v = Vec::new();
    octets(&iv_t, 0x04, c.depth, &mut iv_v)?;
    let iv: [u8; 16] = iv_v
        .as_slice()
        .try_into()
        .map_err(|_| RecipientError::Structure("AES-CBC IV is not 16 bytes"))?;
    let content_t = e.next()?;
    let mut content = Vec::new();
    octets(&content_t, 0x80, e.depth, &mut content)?;
    Ok(ParsedEnvelope {
        wrapped_key,
        iv,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BER element with a definite length.
    fn d(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
        let c: Vec<u8> = parts.concat();
        let mut out = vec![tag];
        match (u8::try_from(c.len()), u16::try_from(c.len())) {
            (Ok(short), _) if short < 0x80 => out.push(short),
            (_, Ok(long)) => {
                out.push(0x82);
                out.extend_from_slice(&long.to_be_bytes());
            }
            _ => panic!("test element of {} bytes is too long", c.len()),
        }
        out.extend_from_slice(&c);
        out
    }

    /// Builds a BER element with an indefinite length.
    fn i(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![tag, 0x80];
        for p in parts {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(&[0, 0]);
        out
    }

    fn alg(oid: &[u8], params: &[&[u8]]) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let o = d(0x06, &[oid]);
        parts.push(&o);
        parts.extend_from_slice(params);
        d(0x30, &parts)
    }

    struct Fixture {
        pkcs8: Vec<u8>,
        wrapped: Vec<u8>,
        iv: [u8; 16],
        content: Vec<u8>,
        plaintext: Vec<u8>,
    }

    fn fixture() -> Fixture {
        use aws_lc_rs::cipher::{PaddedBlockEncryptingKey, UnboundCipherKey};
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::rsa::{KeySize, OaepPublicEncryptingKey, PublicEncryptingKey};
        use aws_lc_rs::signature::KeyPair as _;
        let kp = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'_> = kp.as_der().unwrap();
        let spki: aws_lc_rs::encoding::PublicKeyX509Der<'_> = kp.public_key().as_der().unwrap();
        let pubkey =
            OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(spki.as_ref()).unwrap())
                .unwrap();
        let cek = [0x42u8; 32];
        let mut wrapped = vec![0u8; pubkey.ciphertext_size()];
        let n = pubkey
            .encrypt(&OAEP_SHA256_MGF1SHA256, &cek, &mut wrapped, None)
            .unwrap()
            .len();
        wrapped.truncate(n);
        let plaintext: Vec<u8> = (0..100u8).collect();
        let enc =
            PaddedBlockEncryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_256, &cek).unwrap())
                .unwrap();
        let mut content = plaintext.clone();
        let ctx = enc.encrypt(&mut content).unwrap();
        let iv_slice: &[u8] = (&ctx).try_into().unwrap();
        let mut iv = [0u8; 16];
        iv.copy_from_slice(iv_slice);
        Fixture {
            pkcs8: pkcs8.as_ref().to_vec(),
            wrapped,
            iv,
            content,
            plaintext,
        }
    }

    fn oaep_alg() -> Vec<u8> {
        let null = [5u8, 0];
        let sha = alg(rfc5912::ID_SHA_256.as_bytes(), &[&null]);
        let mgf = alg(rfc5912::ID_MGF_1.as_bytes(), &[&sha]);
        let params = d(0x30, &[&d(0xa0, &[&sha]), &d(0xa1, &[&mgf])]);
        alg(rfc5912::ID_RSAES_OAEP.as_bytes(), &[&params])
    }

    /// Definite-length (DER-like) encoding.
    fn build_der(f: &Fixture) -> Vec<u8> {
        let ktri = d(
            0x30,
            &[
                &d(0x02, &[&[2]]),
                &d(0x80, &[&[1, 2, 3]]),
                &oaep_alg(),
                &d(0x04, &[&f.wrapped]),
            ],
        );
        let eci = d(
            0x30,
            &[
                &d(0x06, &[rfc5911::ID_DATA.as_bytes()]),
                &alg(rfc5911::ID_AES_256_CBC.as_bytes(), &[&d(0x04, &[&f.iv])]),
                &d(0x80, &[&f.content]),
            ],
        );
        let ed = d(0x30, &[&d(0x02, &[&[2]]), &d(0x31, &[&ktri]), &eci]);
        d(
            0x30,
            &[
                &d(0x06, &[rfc5911::ID_ENVELOPED_DATA.as_bytes()]),
                &d(0xa0, &[&ed]),
            ],
        )
    }

    /// AWS-style BER: indefinite lengths everywhere they are allowed, and the encrypted key and
    /// content as constructed strings in small chunks.
    fn build_ber(f: &Fixture, chunk: usize) -> Vec<u8> {
        let chunks =
            |data: &[u8]| -> Vec<u8> { data.chunks(chunk).flat_map(|c| d(0x04, &[c])).collect() };
        let ktri = i(
            0x30,
            &[
                &d(0x02, &[&[2]]),
                &d(0x80, &[&[1, 2, 3]]),
                &oaep_alg(),
                &i(0x24, &[&chunks(&f.wrapped)]),
            ],
        );
        let eci = i(
            0x30,
            &[
                &d(0x06, &[rfc5911::ID_DATA.as_bytes()]),
                &alg(rfc5911::ID_AES_256_CBC.as_bytes(), &[&d(0x04, &[&f.iv])]),
                &i(0xa0, &[&chunks(&f.content)]),
            ],
        );
        let ed = i(0x30, &[&d(0x02, &[&[2]]), &i(0x31, &[&ktri]), &eci]);
        i(
            0x30,
            &[
                &d(0x06, &[rfc5911::ID_ENVELOPED_DATA.as_bytes()]),
                &i(0xa0, &[&ed]),
            ],
        )
    }

    #[test]
    fn opens_der_and_ber_variants() {
        let f = fixture();
        let der = build_der(&f);
        assert_eq!(
            &open_ciphertext_for_recipient(&der, &f.pkcs8).unwrap()[..],
            &f.plaintext[..]
        );
        for chunk in [1, 7, 16, 1000] {
            let ber = build_ber(&f, chunk);
            assert_eq!(
                &open_ciphertext_for_recipient(&ber, &f.pkcs8).unwrap()[..],
                &f.plaintext[..],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn rejects_truncations_and_corruptions_without_panicking() {
        let f = fixture();
        for blob in [build_der(&f), build_ber(&f, 7)] {
            for n in 0..blob.len() {
                assert!(
                    parse(&blob[..n]).is_err()
                        || open_ciphertext_for_recipient(&blob[..n], &f.pkcs8).is_err()
                );
            }
            for idx in (0..blob.len()).step_by(3) {
                let mut t = blob.clone();
                t[idx] ^= 0xff;
                let _ = open_ciphertext_for_recipient(&t, &f.pkcs8);
            }
        }
    }

    #[test]
    fn rejects_wrong_algorithms_and_keys() {
        let f = fixture();
        let g = fixture();
        // Another private key cannot unwrap.
        assert!(matches!(
            open_ciphertext_for_recipient(&build_der(&f), &g.pkcs8),
            Err(RecipientError::Decrypt(_))
        ));
        assert!(matches!(
            open_ciphertext_for_recipient(&build_der(&f), b"junk"),
            Err(RecipientError::PrivateKey)
        ));
        // OAEP with default (SHA-1) parameters is refused.
        let ktri = d(
            0x30,
            &[
                &d(0x02, &[&[0]]),
                &d(0x80, &[&[1]]),
                &alg(rfc5912::ID_RSAES_OAEP.as_bytes(), &[]),
                &d(0x04, &[&f.wrapped]),
            ],
        );
        let ed = d(0x30, &[&d(0x02, &[&[0]]), &d(0x31, &[&ktri])]);
        let blob = d(
            0x30,
            &[
                &d(0x06, &[rfc5911::ID_ENVELOPED_DATA.as_bytes()]),
                &d(0xa0, &[&ed]),
            ],
        );
        assert!(matches!(parse(&blob), Err(RecipientError::Algorithm(_))));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut v = vec![0x04, 0x00];
        for _ in 0..100 {
            v = i(0x30, &[&v]);
        }
        assert!(parse(&v).is_err());
        let huge = vec![0u8; MAX_CMS_LEN + 1];
        assert_eq!(parse(&huge).unwrap_err(), RecipientError::TooLarge);
        assert!(parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse(&[0x04, 0x80, 0, 0]).is_err());
    }
}
