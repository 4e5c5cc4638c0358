fn main() {
    println!("catwalk");
}
