//! Rebuilds the crate when a locale file changes: `rust_i18n::i18n!` embeds
//! `locales/*.yml` at compile time, and a proc macro cannot tell cargo it read them.

fn main() {
    println!("cargo:rerun-if-changed=locales");
}
