//! `flannel`: the flannel CNI plugin. All logic lives in the library; see `flannel_cni`.
fn main() {
    std::process::exit(flannel_cni::main_from_env());
}
