//! A real STM32F405 board: inputs arrive over USART1 (PA9 TX, PA10 RX, 115200 8N1) and results
//! go back the same way, through the embedded-hal 1.0 serial traits implemented by
//! stm32f4xx-hal, in the frames of `lepton_nn::protocol`: the board sends its hello frame, then
//! the host sends `UART_INPUT` + an input for each input (after each result) and `UART_END` to
//! finish (`UART_HELLO` asks for the hello again); the board's last bytes are the exit frame.
//!
//! The core runs at 168 MHz from the PLL on the internal oscillator (no assumption about the
//! board's crystal). Feature `board-on-qemu` keeps the reset clock (HSI, 16 MHz) instead:
//! QEMU 7.2 models no RCC, so a PLL start-up would wait forever. Nothing else differs.

use embedded_hal_nb::nb::block;
use embedded_hal_nb::serial::{Read, Write};
use lepton_nn::protocol::{self, Exit, Hello, ResultFrame, Sink, Summary, UART_END, UART_HELLO, UART_INPUT};
use stm32f4xx_hal::pac;
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::rcc::Rcc;
use stm32f4xx_hal::serial::{Rx, Tx};

pub struct Link {
    tx: Uart,
    rx: Rx<pac::USART1>,
    hello: Hello,
}

struct Uart(Tx<pac::USART1>);

impl Sink for Uart {
    type Error = Exit;
    fn send(&mut self, bytes: &[u8]) -> Result<(), Exit> {
        for &b in bytes {
            block!(self.0.write(b)).map_err(|_| Exit::Io)?;
        }
        Ok(())
    }
}

#[cfg(not(feature = "board-on-qemu"))]
fn clocks(rcc: pac::RCC) -> Rcc {
    rcc.freeze(stm32f4xx_hal::rcc::Config::hsi().sysclk(168.MHz()))
}

#[cfg(feature = "board-on-qemu")]
fn clocks(rcc: pac::RCC) -> Rcc {
    rcc.constrain()
}

impl Link {
    pub fn open(hello: &Hello) -> Result<Link, Exit> {
        let dp = pac::Peripherals::take().ok_or(Exit::Io)?;
        let mut rcc = clocks(dp.RCC);
        let gpioa = dp.GPIOA.split(&mut rcc);
        let serial = dp.USART1.serial((gpioa.pa9, gpioa.pa10), 115_200.bps(), &mut rcc).map_err(|_| Exit::Io)?;
        let (tx, rx) = serial.split();
        let mut link = Link { tx: Uart(tx), rx, hello: *hello };
        protocol::send_hello(&mut link.tx, hello)?;
        Ok(link)
    }

    fn receive(&mut self) -> Result<u8, Exit> {
        block!(self.rx.read()).map_err(|_| Exit::Io)
    }

    /// `Ok(false)` when the host ends the session. A host that asks for the hello (it opened
    /// the port after the board started) gets it again; other bytes are line noise, skipped.
    pub fn read_input(&mut self, input: &mut [u8]) -> Result<bool, Exit> {
        loop {
            match self.receive()? {
                UART_INPUT => break,
                UART_END => return Ok(false),
                UART_HELLO => protocol::send_hello(&mut self.tx, &self.hello)?,
                _ => {}
            }
        }
        for p in input.iter_mut() {
            *p = self.receive()?;
        }
        Ok(true)
    }

    pub fn send_result(&mut self, frame: &ResultFrame) -> Result<(), Exit> {
        protocol::send_result(&mut self.tx, frame)
    }

    pub fn send_summary(&mut self, summary: &Summary) -> Result<(), Exit> {
        protocol::send_summary(&mut self.tx, summary)
    }
}

/// The exit frame, written straight to USART1's registers: `finish` also runs from the panic
/// and fault handlers, where the `Link` (or the USART's set-up) may not exist. Before the
/// link is open (a bad model) the USART is enabled here at the reset clock's 115200 baud.
fn send_exit_frame(code: Exit) {
    // SAFETY: the link is over; nothing else touches USART1, RCC or GPIOA from here on.
    let (rcc, gpioa, usart) = unsafe { (pac::RCC::steal(), pac::GPIOA::steal(), pac::USART1::steal()) };
    if usart.cr1().read().ue().bit_is_clear() {
        rcc.ahb1enr().modify(|_, w| w.gpioaen().set_bit());
        rcc.apb2enr().modify(|_, w| w.usart1en().set_bit());
        // PA9/PA10 in alternate function 7 (USART1).
        gpioa.moder().modify(|_, w| w.moder9().alternate().moder10().alternate());
        gpioa.afrh().modify(|_, w| w.afrh9().af7().afrh10().af7());
        // 16 MHz HSI / 115200 = 138.9: mantissa 8, fraction 11 (oversampling by 16).
        usart.brr().write(|w| unsafe { w.bits(0x8B) });
        usart.cr1().write(|w| w.ue().set_bit().te().set_bit().re().set_bit());
    }
    for b in protocol::exit_frame(code) {
        while usart.sr().read().txe().bit_is_clear() {}
        usart.dr().write(|w| unsafe { w.bits(b as u16) });
    }
    while usart.sr().read().tc().bit_is_clear() {}
}

/// No host to exit to: send the exit frame, log the code and halt (at a breakpoint when a
/// debugger is attached; without one a breakpoint would fault).
pub fn finish(code: Exit) -> ! {
    send_exit_frame(code);
    defmt::info!("exit code {} ({})", code.code(), code.name());
    let debugger_attached = cortex_m::peripheral::DCB::is_debugger_attached();
    loop {
        if debugger_attached {
            cortex_m::asm::bkpt();
        }
        cortex_m::asm::wfi();
    }
}
