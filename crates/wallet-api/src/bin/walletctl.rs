//! `walletctl`: the casino wallet API from a terminal. See `walletctl --help`.

fn main() {
    wallet_api::ctl::main()
}
