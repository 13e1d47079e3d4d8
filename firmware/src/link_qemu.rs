//! QEMU: inputs from a host file, results to another, both over semihosting, in the frames of
//! `lepton_nn::protocol`. The paths come from the command line (`-append "INPUTS RESULTS"`); the
//! exit code becomes QEMU's exit status.

use lepton_nn::protocol::{self, Exit, Hello, ResultFrame, Sink, Summary};
use semihosting::experimental::env;
use semihosting::fs::File;
use semihosting::io::{Read, Write};

pub struct Link {
    inputs: File,
    results: ResultsFile,
}

struct ResultsFile(File);

impl Sink for ResultsFile {
    type Error = Exit;
    fn send(&mut self, bytes: &[u8]) -> Result<(), Exit> {
        self.0.write_all(bytes).map_err(|_| Exit::Io)
    }
}

/// `arg` as a NUL-terminated path in `buf`.
fn open_path<'b>(arg: &str, buf: &'b mut heapless::Vec<u8, 256>) -> Result<&'b core::ffi::CStr, Exit> {
    buf.clear();
    buf.extend_from_slice(arg.as_bytes()).map_err(|_| Exit::Usage)?;
    buf.push(0).map_err(|_| Exit::Usage)?;
    core::ffi::CStr::from_bytes_with_nul(buf).map_err(|_| Exit::Usage)
}

impl Link {
    pub fn open(hello: &Hello) -> Result<Link, Exit> {
        let args = env::args::<512>().map_err(|_| Exit::Usage)?;
        let mut args = args.skip(1); // argv[0] is the kernel
        let (Some(Ok(inputs)), Some(Ok(results))) = (args.next(), args.next()) else {
            defmt::error!("usage: -append \"INPUTS_FILE RESULTS_FILE\"");
            return Err(Exit::Usage);
        };
        let mut path = heapless::Vec::new();
        let inputs = File::open(open_path(inputs, &mut path)?).map_err(|_| {
            defmt::error!("cannot open the inputs file");
            Exit::Io
        })?;
        let results = File::create(open_path(results, &mut path)?).map_err(|_| {
            defmt::error!("cannot create the results file");
            Exit::Io
        })?;
        let mut link = Link { inputs, results: ResultsFile(results) };
        protocol::send_hello(&mut link.results, hello)?;
        Ok(link)
    }

    /// `Ok(false)` at the end of the inputs file.
    pub fn read_input(&mut self, input: &mut [u8]) -> Result<bool, Exit> {
        let mut filled = 0;
        while filled < input.len() {
            match self.inputs.read(&mut input[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    defmt::error!("inputs file ends inside an input");
                    return Err(Exit::Io);
                }
                Ok(n) => filled += n,
                Err(_) => return Err(Exit::Io),
            }
        }
        Ok(true)
    }

    pub fn send_result(&mut self, frame: &ResultFrame) -> Result<(), Exit> {
        protocol::send_result(&mut self.results, frame)
    }

    pub fn send_summary(&mut self, summary: &Summary) -> Result<(), Exit> {
        protocol::send_summary(&mut self.results, summary)
    }
}

pub fn finish(code: Exit) -> ! {
    semihosting::process::exit(code.code() as i32)
}
