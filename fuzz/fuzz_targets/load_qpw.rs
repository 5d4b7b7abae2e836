//! Arbitrary bytes as a `.qpw` image: the loader must refuse or accept without panicking;
//! an accepted file goes through validation and, when small, one reference run. The same
//! bytes are tried again with every checksum recomputed so mutations reach the structural
//! and metadata checks behind the checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qp::format::QpwFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = QpwFile::from_bytes(data) {
        qp_fuzz::validate_and_run(file);
    }
    let mut fixed = data.to_vec();
    qp_fuzz::fix_checksums(&mut fixed);
    if let Ok(file) = QpwFile::from_bytes(&fixed) {
        qp_fuzz::validate_and_run(file);
    }
});
