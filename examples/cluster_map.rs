fn main() {
    tokio_multiprocessing::init();
}
