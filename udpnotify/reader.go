package udpnotify

import (
	"errors"
	"io"
)

// msgReader reads framed messages from the rock.
type msgReader struct {
	r     io.Reader
	buf   []byte
	start int // first unparsed byte
	end   int // end of the bytes read
}

// next returns the next message; io.EOF at a clean end between messages. The message's
// Payload aliases the reader's buffer until the next call.
func (m *msgReader) next() (Message, error) {
	if m.buf == nil {
		m.buf = make([]byte, 2+MaxDatagramMessageLen)
	}
	for {
		msg, used, err := ParseMessage(m.buf[m.start:m.end])
		if err == nil {
			m.start += used
			return msg, nil
		}
		if !errors.Is(err, ErrShort) {
			return Message{}, err
		}
		// Make room: move the partial message to the front (the previous message, whose
		// Payload may alias the buffer, has been consumed by now).
		m.end = copy(m.buf, m.buf[m.start:m.end])
		m.start = 0
		k, rerr := m.r.Read(m.buf[m.end:])
		m.end += k
		if rerr != nil && k == 0 {
			if errors.Is(rerr, io.EOF) && m.end > 0 {
				return Message{}, io.ErrUnexpectedEOF
			}
			return Message{}, rerr
		}
	}
}
