#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kmsd_fuzz::wrapped_key(data));
