fn main() {
    println!("{}", ingress_userspace::kernel::object().len());
}
