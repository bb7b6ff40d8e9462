//! `walletctl`: the casino wallet API from a terminal. See `walletctl --help`.

use clap::Parser;

fn main() {
    let cli = wallet_api::ctl::Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(wallet_api::ctl::run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("walletctl: {e}");
            std::process::exit(1);
        }
    }
}
