// Dialtone softphone: the gateway's reference web client.
// It speaks only the documented WebSocket protocol (docs/protocol.md):
// START_SESSION / CLOSE_SESSION, START_CALL, ACCEPT_CALL / REJECT_CALL,
// HANGUP_CALL, SDP_OFFER (from the gateway) / SDP_ANSWER, ICE_CANDIDATE,
// SEND_DTMF_SIGNAL, and the gateway's replies and events.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const ui = {
    connection: $('connection-state'),
    reconnect: $('reconnect'),
    error: $('error'),
    loginForm: $('login-form'),
    username: $('username'),
    password: $('password'),
    login: $('login'),
    logout: $('logout'),
    session: $('session-state'),
    sessionDetail: $('session-detail'),
    incoming: $('incoming'),
    incomingFrom: $('incoming-from'),
    accept: $('accept'),
    reject: $('reject'),
    dialForm: $('dial-form'),
    number: $('number'),
    call: $('call'),
    hangup: $('hangup'),
    callState: $('call-state'),
    timer: $('timer'),
    callDetail: $('call-detail'),
    levelLocal: $('level-local'),
    levelRemote: $('level-remote'),
    remoteAudio: $('remote-audio'),
    dtmfVia: $('dtmf-via'),
    keys: Array.from(document.querySelectorAll('button[data-digit]')),
    digitsSent: $('digits-sent'),
    digitsReceived: $('digits-received'),
    dtmfNote: $('dtmf-note'),
    dtmfMethods: $('dtmf-methods'),
    ringTone: $('ring-tone'),
    log: $('log'),
  };

  const AUDIO_CODECS = ['opus/48000/2', 'PCMU/8000', 'PCMA/8000'];
  const SILENCE_DBFS = -120;
  const LOG_LIMIT = 300;

  // Everything the tests and the UI read.
  const state = {
    connection: 'connecting', // connecting | connected | disconnected
    session: 'logged-out', // logged-out | logging-in | logged-in | failed
    call: 'idle', // idle | trying | ringing | progress | connected | failed | finished | incoming
    callId: null,
    sessionId: null,
    clientId: null,
    lastError: null,
    digitsSent: '',
    digitsReceived: '',
    messages: [],
    iceServers: [],
  };

  let ws = null;
  let call = null; // the one call shown: see newCall()
  let timerHandle = null;
  let audioCtx = null;
  let localMeter = null; // {source, analyser, sink}
  let remoteMeter = null;
  let ringer = null;

  // ---------------------------------------------------------------- helpers

  function randomId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function logLine(direction, msg) {
    const li = document.createElement('li');
    li.className = direction;
    li.textContent = (direction === 'out' ? '→ ' : '← ') + JSON.stringify(msg);
    ui.log.appendChild(li);
    while (ui.log.childElementCount > LOG_LIMIT) ui.log.removeChild(ui.log.firstChild);
  }

  function send(msg) {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      showError('Not connected to the gateway: ' + msg.type + ' was not sent.');
      return false;
    }
    ws.send(JSON.stringify(msg));
    const shown = msg.type === 'START_SESSION' ? Object.assign({}, msg, { password: '…' }) : msg;
    logLine('out', shown);
    return true;
  }

  function showError(text) {
    state.lastError = text;
    ui.error.textContent = text;
  }

  function clearError() {
    ui.error.textContent = '';
  }

  function setBadge(el, value) {
    el.textContent = value;
    el.dataset.state = value;
  }

  function setConnection(value) {
    state.connection = value;
    setBadge(ui.connection, value);
    ui.reconnect.hidden = value !== 'disconnected';
    render();
  }

  function setSession(value, detail) {
    state.session = value;
    setBadge(ui.session, value);
    if (detail !== undefined) ui.sessionDetail.textContent = detail;
    render();
  }

  function setCall(value, detail) {
    state.call = value;
    setBadge(ui.callState, value);
    if (detail !== undefined) ui.callDetail.textContent = detail;
    render();
  }

  function callActive() {
    return call !== null;
  }

  // Enables and disables controls from the state.
  function render() {
    const connected = state.connection === 'connected';
    const loggedIn = state.session === 'logged-in';
    ui.login.disabled = !connected || state.session === 'logging-in' || loggedIn;
    ui.logout.disabled = !connected || !loggedIn;
    ui.username.disabled = loggedIn || state.session === 'logging-in';
    ui.password.disabled = ui.username.disabled;
    ui.call.disabled = !connected || !loggedIn || callActive();
    ui.hangup.disabled = !callActive();
    const keysOn = callActive() && state.call === 'connected';
    for (const key of ui.keys) key.disabled = !keysOn;
  }

  function formatDuration(ms) {
    const total = Math.max(0, Math.floor(ms / 1000));
    const m = Math.floor(total / 60);
    const s = total % 60;
    return String(m).padStart(2, '0') + ':' + String(s).padStart(2, '0');
  }

  function startTimer() {
    stopTimer();
    const started = Date.now();
    let ticks = 0;
    ui.timer.textContent = '00:00';
    timerHandle = setInterval(() => {
      ui.timer.textContent = formatDuration(Date.now() - started);
      // Once a second: the codec and packet counts in the call line.
      if (++ticks % 4 === 0 && call && call.pc) {
        const c = call;
        window.dialtone
          .stats()
          .then((st) => {
            if (c !== call) return;
            c.traffic = '\u2191 ' + st.packetsSent + ' / \u2193 ' + st.packetsReceived + ' packets';
            describeCall();
          })
          .catch(() => {});
      }
    }, 250);
  }

  function stopTimer() {
    if (timerHandle !== null) clearInterval(timerHandle);
    timerHandle = null;
  }

  function describeSip(status, reason) {
    if (status && reason) return status + ' ' + reason;
    if (status) return String(status);
    return reason || '';
  }

  // -------------------------------------------------------------- WebAudio

  function audio() {
    if (!audioCtx) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return null;
      audioCtx = new Ctx();
    }
    if (audioCtx.state === 'suspended') audioCtx.resume().catch(() => {});
    return audioCtx;
  }

  // source → analyser → silent gain → destination, so the graph is pulled
  // even where analysers alone are not.
  function makeMeter(stream, fftSize) {
    const ctx = audio();
    if (!ctx) return null;
    const source = ctx.createMediaStreamSource(stream);
    const analyser = ctx.createAnalyser();
    analyser.fftSize = fftSize;
    analyser.smoothingTimeConstant = 0.5;
    const sink = ctx.createGain();
    sink.gain.value = 0;
    source.connect(analyser);
    analyser.connect(sink);
    sink.connect(ctx.destination);
    return { source, analyser, sink };
  }

  function dropMeter(meter) {
    if (!meter) return;
    try {
      meter.source.disconnect();
      meter.analyser.disconnect();
      meter.sink.disconnect();
    } catch (e) {
      /* already disconnected */
    }
  }

  function dbfs(meter) {
    if (!meter) return SILENCE_DBFS;
    const data = new Float32Array(meter.analyser.fftSize);
    meter.analyser.getFloatTimeDomainData(data);
    let sum = 0;
    for (let i = 0; i < data.length; i++) sum += data[i] * data[i];
    const rms = Math.sqrt(sum / data.length);
    if (!(rms > 0)) return SILENCE_DBFS;
    const db = 20 * Math.log10(rms);
    return Number.isFinite(db) ? Math.max(SILENCE_DBFS, db) : SILENCE_DBFS;
  }

  function showLevel(el, db) {
    // The bar spans -60 .. 0 dBFS.
    const pct = Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
    el.querySelector('.bar i').style.width = pct.toFixed(1) + '%';
    el.querySelector('.db').textContent = db.toFixed(1) + ' dBFS';
  }

  setInterval(() => {
    showLevel(ui.levelLocal, dbfs(localMeter));
    showLevel(ui.levelRemote, dbfs(remoteMeter));
  }, 100);

  // A North American ring (440 + 480 Hz, 2 s on, 4 s off), when asked for.
  function startRinging() {
    stopRinging();
    if (!ui.ringTone.checked) return;
    const ctx = audio();
    if (!ctx) return;
    const gain = ctx.createGain();
    gain.gain.value = 0;
    gain.connect(ctx.destination);
    const oscillators = [440, 480].map((hz) => {
      const o = ctx.createOscillator();
      o.frequency.value = hz;
      o.connect(gain);
      o.start();
      return o;
    });
    const cycle = () => {
      const t = ctx.currentTime;
      gain.gain.setValueAtTime(0.08, t);
      gain.gain.setValueAtTime(0, t + 2);
    };
    cycle();
    ringer = { gain, oscillators, interval: setInterval(cycle, 6000) };
  }

  function stopRinging() {
    if (!ringer) return;
    clearInterval(ringer.interval);
    for (const o of ringer.oscillators) {
      try {
        o.stop();
      } catch (e) {
        /* not started */
      }
    }
    ringer.gain.disconnect();
    ringer = null;
  }

  // ------------------------------------------------------------- the call

  function capabilities() {
    return {
      userAgent: navigator.userAgent,
      audioCodecs: AUDIO_CODECS.slice(),
      mediaTransport: ['SRTP'],
    };
  }

  function newCall(direction, fields) {
    return Object.assign(
      {
        direction, // 'out' | 'in'
        callId: null,
        clientCallId: null,
        aUri: null,
        accepted: false,
        pc: null,
        mic: null, // Promise of a MediaStream or null
        localStream: null,
        answerSent: false,
        pendingCandidates: [], // our candidates, held until SDP_ANSWER is out
        remoteCandidates: [], // the gateway's, held until the offer is applied
        endOfCandidatesSent: false,
        offerChain: Promise.resolve(),
        ended: false,
      },
      fields,
    );
  }

  function resetDigits() {
    state.digitsSent = '';
    state.digitsReceived = '';
    ui.digitsSent.textContent = '';
    ui.digitsReceived.textContent = '';
    ui.dtmfNote.textContent = '';
    ui.dtmfMethods.textContent = '';
  }

  // Asks for the microphone once per call; a refusal leaves the call
  // receive-only and says so.
  function requestMic(c) {
    if (c.mic) return c.mic;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError(
        'No microphone access: browsers allow it only on https:// pages or on localhost. ' +
          'The call continues receive-only.',
      );
      c.mic = Promise.resolve(null);
      return c.mic;
    }
    c.mic = navigator.mediaDevices
      .getUserMedia({ audio: true })
      .then((stream) => {
        if (c.ended) {
          stream.getTracks().forEach((t) => t.stop());
          return null;
        }
        c.localStream = stream;
        dropMeter(localMeter);
        localMeter = makeMeter(stream, 2048);
        return stream;
      })
      .catch((err) => {
        showError('Microphone unavailable (' + err.name + ': ' + err.message + '). The call continues receive-only.');
        return null;
      });
    return c.mic;
  }

  function startCall() {
    clearError();
    const bUri = ui.number.value.trim();
    if (!bUri) {
      showError('Enter a number or SIP URI to call.');
      ui.number.focus();
      return;
    }
    if (state.session !== 'logged-in' || callActive()) return;
    audio();
    resetDigits();
    ui.timer.textContent = '00:00';
    call = newCall('out', { clientCallId: 'web-' + randomId() });
    state.callId = null;
    requestMic(call);
    const sent = send({
      type: 'START_CALL',
      sessionId: state.sessionId,
      bUri,
      clientCallId: call.clientCallId,
      cc: capabilities(),
      vv: [true, false],
    });
    if (!sent) {
      endCall('failed', 'The call was not placed.');
      return;
    }
    setCall('trying', 'Calling ' + bUri + '…');
  }

  function hangup() {
    if (!call) return;
    call.hungUp = true;
    if (!call.callId) {
      // START_CALL is out but CALL_STARTING has not come: hang up as soon
      // as it gives the callId.
      call.hangupWanted = true;
      return;
    }
    send({ type: 'HANGUP_CALL', sessionId: state.sessionId, callId: call.callId });
    ui.callDetail.textContent = 'Hanging up…';
    ui.hangup.disabled = true;
  }

  function acceptIncoming() {
    if (!call || call.direction !== 'in' || call.accepted) return;
    clearError();
    audio();
    stopRinging();
    call.accepted = true;
    requestMic(call);
    send({ type: 'ACCEPT_CALL', sessionId: state.sessionId, callId: call.callId, cc: capabilities() });
    ui.incoming.hidden = true;
    ui.callDetail.textContent = 'Answering ' + (call.aUri || '') + '…';
    render();
  }

  function rejectIncoming() {
    if (!call || call.direction !== 'in' || call.accepted) return;
    stopRinging();
    send({ type: 'REJECT_CALL', sessionId: state.sessionId, callId: call.callId, reason: 'DECLINE' });
    ui.incoming.hidden = true;
    ui.callDetail.textContent = 'Rejected the call from ' + (call.aUri || 'the caller') + '.';
    call.accepted = true; // decided; wait for CALL_FINISHED
    call.rejected = true;
    render();
  }

  // Ends the call in the UI: media torn down, state `failed` or `finished`.
  function endCall(finalState, detail) {
    const c = call;
    call = null;
    stopTimer();
    stopRinging();
    ui.incoming.hidden = true;
    if (c) {
      c.ended = true;
      if (c.pc) {
        c.pc.onicecandidate = null;
        c.pc.ontrack = null;
        c.pc.onconnectionstatechange = null;
        c.pc.close();
      }
      if (c.localStream) c.localStream.getTracks().forEach((t) => t.stop());
    }
    dropMeter(localMeter);
    dropMeter(remoteMeter);
    localMeter = null;
    remoteMeter = null;
    ui.remoteAudio.srcObject = null;
    setCall(finalState, detail);
  }

  function createPeerConnection(c) {
    const pc = new RTCPeerConnection({
      iceServers: state.iceServers,
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
    });
    c.pc = pc;
    pc.onicecandidate = (e) => {
      if (c.ended) return;
      const mid = pc.getTransceivers().length ? pc.getTransceivers()[0].mid : null;
      let msg;
      if (e.candidate && e.candidate.candidate) {
        msg = {
          type: 'ICE_CANDIDATE',
          sessionId: state.sessionId,
          callId: c.callId,
          candidate: e.candidate.candidate,
          sdpMid: e.candidate.sdpMid,
          sdpMLineIndex: e.candidate.sdpMLineIndex,
        };
      } else {
        if (c.endOfCandidatesSent) return;
        c.endOfCandidatesSent = true;
        msg = { type: 'ICE_CANDIDATE', sessionId: state.sessionId, callId: c.callId, candidate: '', sdpMid: mid, sdpMLineIndex: 0 };
      }
      if (c.answerSent) send(msg);
      else c.pendingCandidates.push(msg);
    };
    pc.ontrack = (e) => {
      if (c.ended || e.track.kind !== 'audio') return;
      const stream = e.streams && e.streams[0] ? e.streams[0] : new MediaStream([e.track]);
      ui.remoteAudio.srcObject = stream;
      ui.remoteAudio.muted = false;
      const played = ui.remoteAudio.play();
      if (played && played.catch) played.catch(() => {});
      audio();
      dropMeter(remoteMeter);
      remoteMeter = makeMeter(stream, 4096);
    };
    pc.onconnectionstatechange = () => {
      if (c.ended) return;
      const s = pc.connectionState;
      c.mediaState = s;
      if (s === 'failed') {
        showError('The media connection failed (ICE / DTLS could not reach the gateway).');
      }
      describeCall();
    };
    return pc;
  }

  function describeCall() {
    if (!call) return;
    const parts = [];
    if (call.direction === 'in') parts.push('From ' + (call.aUri || 'unknown'));
    if (call.mediaState) parts.push('media ' + call.mediaState);
    if (call.codec) parts.push(call.codec);
    if (call.traffic) parts.push(call.traffic);
    if (state.call === 'connected' || call.mediaState) ui.callDetail.textContent = parts.join(' · ');
  }

  // SDP_OFFER from the gateway: answer it from the microphone.
  async function applyOffer(c, sdp) {
    const stream = await requestMic(c);
    if (c.ended) return;
    const pc = c.pc || createPeerConnection(c);
    await pc.setRemoteDescription({ type: 'offer', sdp });
    if (c.ended) return;
    for (const cand of c.remoteCandidates.splice(0)) {
      await pc.addIceCandidate(cand).catch(() => {});
    }
    const transceiver =
      pc.getTransceivers().find((t) => t.receiver.track && t.receiver.track.kind === 'audio') || pc.getTransceivers()[0];
    if (transceiver) {
      const track = stream ? stream.getAudioTracks()[0] : null;
      if (track && transceiver.sender.track !== track) {
        await transceiver.sender.replaceTrack(track);
        if (transceiver.sender.setStreams) transceiver.sender.setStreams(stream);
      }
      transceiver.direction = 'sendrecv';
    }
    const answer = await pc.createAnswer();
    if (c.ended) return;
    await pc.setLocalDescription(answer);
    if (c.ended) return;
    send({ type: 'SDP_ANSWER', sessionId: state.sessionId, callId: c.callId, sdp: pc.localDescription.sdp });
    c.answerSent = true;
    for (const msg of c.pendingCandidates.splice(0)) send(msg);
  }

  function onSdpOffer(msg) {
    const c = call;
    c.offerChain = c.offerChain
      .then(() => applyOffer(c, msg.sdp))
      .catch((err) => {
        if (c.ended) return;
        showError('Could not answer the gateway\u2019s media offer: ' + (err && err.message ? err.message : err));
        send({ type: 'HANGUP_CALL', sessionId: state.sessionId, callId: c.callId });
      });
  }

  function onSdpAnswer(msg) {
    const c = call;
    if (!c.pc || c.pc.signalingState !== 'have-local-offer') {
      logLine('in', { note: 'SDP_ANSWER ignored: this page sent no SDP_OFFER' });
      return;
    }
    c.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp }).catch((err) => {
      showError('Could not apply the gateway\u2019s SDP answer: ' + err.message);
    });
  }

  function onRemoteCandidate(msg) {
    const c = call;
    const cand = msg.candidate
      ? { candidate: msg.candidate, sdpMid: msg.sdpMid ?? null, sdpMLineIndex: msg.sdpMLineIndex ?? 0 }
      : null;
    if (!cand) return;
    if (c.pc && c.pc.remoteDescription) c.pc.addIceCandidate(cand).catch(() => {});
    else c.remoteCandidates.push(cand);
  }

  // ------------------------------------------------------------------ DTMF

  function sendDigit(digit) {
    if (!call || !call.callId || state.call !== 'connected') return;
    flashKey(digit);
    let method = ui.dtmfVia.value;
    let note = '';
    if (method === 'browser') {
      const sender = call.pc && call.pc.getSenders().find((s) => s.track && s.track.kind === 'audio');
      const dtmf = sender && sender.dtmf;
      if (dtmf && dtmf.canInsertDTMF) {
        // insertDTMF replaces what is still queued: append instead.
        dtmf.insertDTMF(dtmf.toneBuffer + digit, 100, 70);
      } else {
        method = 'gateway';
        note = 'browser DTMF unavailable, sent via gateway';
      }
    }
    if (method === 'gateway') {
      send({ type: 'SEND_DTMF_SIGNAL', sessionId: state.sessionId, callId: call.callId, dtmfString: digit });
    }
    state.digitsSent += digit;
    ui.digitsSent.textContent = state.digitsSent;
    ui.dtmfNote.textContent = note || 'via ' + method;
  }

  function flashKey(digit) {
    const key = ui.keys.find((k) => k.dataset.digit === digit);
    if (!key) return;
    key.classList.add('flash');
    setTimeout(() => key.classList.remove('flash'), 150);
  }

  // --------------------------------------------------------- the messages

  function ours(msg) {
    return call && msg.callId && msg.callId === call.callId;
  }

  function onMessage(msg) {
    switch (msg.type) {
      case 'CONNECTED':
        state.clientId = msg.clientId || null;
        break;

      case 'DISCONNECTED':
        showError('The gateway is shutting down.');
        break;

      case 'SESSION_STARTED':
        if (state.session !== 'logging-in') break;
        state.sessionId = msg.sessionId;
        state.iceServers = Array.isArray(msg.iceServers) ? msg.iceServers : [];
        setSession('logged-in', 'Logged in as ' + ui.username.value.trim() + '.');
        ui.number.focus();
        break;

      case 'SESSION_FAILED': {
        if (state.session !== 'logging-in') break;
        state.sessionId = null;
        const why = [msg.reason || 'failed', msg.sipStatus ? '(SIP ' + msg.sipStatus + ')' : '']
          .filter(Boolean)
          .join(' ');
        const text = 'Login failed: ' + why + (msg.detail ? ' \u2014 ' + msg.detail : '');
        showError(text);
        setSession('failed', text);
        break;
      }

      // The session stays logged in: calls go on and the gateway keeps
      // retrying; only incoming calls cannot reach us meanwhile.
      case 'REGISTRATION_LOST':
        if (msg.sessionId !== state.sessionId) break;
        setSession('logged-in', 'Registration lost (' + (msg.reason || 'error') +
          (msg.detail ? ' \u2014 ' + msg.detail : '') + '): no incoming calls until it is back; retrying.');
        break;

      case 'REGISTRATION_RESTORED':
        if (msg.sessionId !== state.sessionId) break;
        setSession('logged-in', 'Registered again as ' + ui.username.value.trim() + '.');
        break;

      case 'SESSION_CLOSED':
        if (msg.sessionId !== state.sessionId) break;
        if (call) endCall('finished', 'The session closed.');
        state.sessionId = null;
        state.iceServers = [];
        setSession('logged-out', 'Logged out.');
        break;

      case 'CALL_STARTING': {
        if (!call) break;
        if (!call.callId && call.direction === 'out' && msg.clientCallId === call.clientCallId) {
          call.callId = msg.callId;
          state.callId = msg.callId;
          if (call.hangupWanted) hangup();
        }
        if (!ours(msg)) break;
        const stage = { TRYING: 'trying', RINGING: 'ringing', SESSION_PROGRESS: 'progress' }[msg.stage] || 'trying';
        const words = { trying: 'Trying…', ringing: 'Ringing…', progress: 'Session progress (early media)…' };
        if (state.call !== 'connected') setCall(stage, words[stage]);
        break;
      }

      case 'CALL_STARTED':
        if (!ours(msg)) break;
        audio();
        startTimer();
        setCall('connected', 'Connected.');
        describeCall();
        break;

      case 'CALL_FAILED': {
        if (!ours(msg)) break;
        const sip = describeSip(msg.sipStatus, msg.sipReason);
        const text = 'Call failed: ' + (msg.reason || 'unknown reason') + (sip ? ' (SIP ' + sip + ')' : '');
        showError(text);
        endCall('failed', text);
        break;
      }

      case 'CALL_FINISHED': {
        if (!ours(msg)) break;
        let text = 'Call finished.';
        if (call.rejected) text = 'Call rejected.';
        else if (call.direction === 'in' && !call.accepted && !call.hungUp) text = 'The caller hung up before the call was answered.';
        if (msg.quality && typeof msg.quality.mos === 'number') {
          text += ' Quality: MOS ' + msg.quality.mos.toFixed(2);
          if (typeof msg.quality.packetsLost === 'number') text += ', ' + msg.quality.packetsLost + ' packets lost';
          if (typeof msg.quality.jitterMs === 'number') text += ', jitter ' + msg.quality.jitterMs.toFixed(1) + ' ms';
          text += '.';
        }
        endCall('finished', text);
        break;
      }

      case 'INCOMING_CALL':
        if (msg.sessionId !== state.sessionId) break;
        if (call) {
          // One call at a time.
          send({ type: 'REJECT_CALL', sessionId: msg.sessionId, callId: msg.callId, reason: 'BUSY' });
          break;
        }
        clearError();
        resetDigits();
        ui.timer.textContent = '00:00';
        call = newCall('in', { callId: msg.callId, aUri: msg.aUri || '' });
        state.callId = msg.callId;
        ui.incomingFrom.textContent = msg.aUri || 'unknown caller';
        ui.incoming.hidden = false;
        setCall('incoming', 'Incoming call from ' + (msg.aUri || 'unknown caller') + '.');
        startRinging();
        break;

      case 'SDP_OFFER':
        if (ours(msg)) onSdpOffer(msg);
        break;

      case 'SDP_ANSWER':
        if (ours(msg)) onSdpAnswer(msg);
        break;

      case 'ICE_CANDIDATE':
        if (ours(msg)) onRemoteCandidate(msg);
        break;

      case 'DTMF_RECEIVED':
        if (!ours(msg)) break;
        state.digitsReceived += msg.digit;
        ui.digitsReceived.textContent = state.digitsReceived;
        if (msg.method) ui.dtmfMethods.textContent = 'via ' + msg.method;
        break;

      case 'ERROR': {
        const where = [msg.requestType, msg.field ? 'field ' + msg.field : ''].filter(Boolean).join(', ');
        showError('Error ' + msg.code + ': ' + msg.message + (where ? ' (' + where + ')' : ''));
        if (msg.requestType === 'START_SESSION' && state.session === 'logging-in') {
          setSession('failed', 'Login refused.');
        } else if (msg.requestType === 'START_CALL' && call && call.direction === 'out' && !call.callId) {
          endCall('failed', 'The gateway refused the call.');
        } else if (msg.code === 'UNKNOWN_CALL' && msg.requestType === 'HANGUP_CALL' && call) {
          endCall('finished', 'The call had already ended.');
        } else if (msg.code === 'UNKNOWN_SESSION' && state.session === 'logged-in' && msg.sessionId === state.sessionId) {
          if (call) endCall('failed', 'The session is gone.');
          state.sessionId = null;
          setSession('logged-out', 'The session is gone; log in again.');
        }
        break;
      }

      default:
        break;
    }
  }

  // ------------------------------------------------------------ connection

  function connect() {
    if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) return;
    const url = (location.protocol === 'https:' ? 'wss' : 'ws') + '://' + location.host + '/ws';
    setConnection('connecting');
    const socket = new WebSocket(url);
    ws = socket;
    socket.onopen = () => {
      if (ws !== socket) return;
      clearError();
      setConnection('connected');
    };
    socket.onmessage = (e) => {
      if (ws !== socket) return;
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      state.messages.push(msg);
      logLine('in', msg);
      try {
        onMessage(msg);
      } catch (err) {
        showError('Page error handling ' + msg.type + ': ' + err.message);
      }
    };
    socket.onclose = (e) => {
      if (ws !== socket) return;
      // The gateway ends every session of a dropped connection.
      if (call) endCall('failed', 'The connection to the gateway dropped.');
      const wasLoggedIn = state.sessionId !== null || state.session === 'logging-in';
      state.sessionId = null;
      state.iceServers = [];
      setSession('logged-out', wasLoggedIn ? 'The connection dropped; log in again.' : '');
      setConnection('disconnected');
      showError('Disconnected from the gateway' + (e.code ? ' (close code ' + e.code + ')' : '') + '. Press Reconnect.');
    };
    socket.onerror = () => {};
  }

  // --------------------------------------------------------------- wiring

  ui.loginForm.addEventListener('submit', (e) => {
    e.preventDefault();
    clearError();
    const username = ui.username.value.trim();
    if (!username) {
      showError('Enter a user name.');
      ui.username.focus();
      return;
    }
    audio();
    if (send({ type: 'START_SESSION', username, password: ui.password.value })) {
      setSession('logging-in', 'Logging in as ' + username + '…');
    }
  });

  ui.logout.addEventListener('click', () => {
    clearError();
    if (state.sessionId) send({ type: 'CLOSE_SESSION', sessionId: state.sessionId });
    ui.sessionDetail.textContent = 'Logging out…';
  });

  ui.dialForm.addEventListener('submit', (e) => {
    e.preventDefault();
    startCall();
  });
  ui.hangup.addEventListener('click', () => {
    audio();
    hangup();
  });
  ui.accept.addEventListener('click', acceptIncoming);
  ui.reject.addEventListener('click', rejectIncoming);
  ui.reconnect.addEventListener('click', () => {
    clearError();
    connect();
  });
  for (const key of ui.keys) key.addEventListener('click', () => sendDigit(key.dataset.digit));

  // Digits from the keyboard while connected (not while typing in a field).
  document.addEventListener('keydown', (e) => {
    if (state.call !== 'connected' || e.ctrlKey || e.metaKey || e.altKey) return;
    const tag = e.target && e.target.tagName;
    if (tag === 'INPUT' || tag === 'SELECT' || tag === 'TEXTAREA') return;
    const digit = e.key.toUpperCase();
    if (/^[0-9*#A-D]$/.test(digit)) sendDigit(digit);
  });

  // ------------------------------------------------------------ test hooks

  window.dialtone = {
    state() {
      return {
        connection: state.connection,
        session: state.session,
        call: state.call,
        callId: state.callId,
        sessionId: state.sessionId,
        lastError: state.lastError,
        digitsSent: state.digitsSent,
        digitsReceived: state.digitsReceived,
        messages: state.messages,
      };
    },
    levels() {
      return { localDbfs: dbfs(localMeter), remoteDbfs: dbfs(remoteMeter) };
    },
    remotePeakHz() {
      if (!remoteMeter || !audioCtx) return null;
      const analyser = remoteMeter.analyser;
      const bins = new Float32Array(analyser.frequencyBinCount);
      analyser.getFloatFrequencyData(bins);
      let best = 0;
      for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
      return (best * audioCtx.sampleRate) / analyser.fftSize;
    },
    async stats() {
      const out = { packetsSent: 0, packetsReceived: 0, bytesSent: 0, bytesReceived: 0, codec: null };
      const pc = call && call.pc;
      if (!pc) return out;
      const report = await pc.getStats();
      let codecId = null;
      report.forEach((s) => {
        const audioKind = s.kind === 'audio' || s.mediaType === 'audio';
        if (s.type === 'outbound-rtp' && audioKind) {
          out.packetsSent += s.packetsSent || 0;
          out.bytesSent += s.bytesSent || 0;
          if (!codecId && s.codecId) codecId = s.codecId;
        } else if (s.type === 'inbound-rtp' && audioKind) {
          out.packetsReceived += s.packetsReceived || 0;
          out.bytesReceived += s.bytesReceived || 0;
          if (s.codecId) codecId = s.codecId;
        }
      });
      const codec = codecId && report.get(codecId);
      if (codec) {
        out.codec = codec.mimeType || null;
        if (call) {
          call.codec = (codec.mimeType || '').replace(/^audio\//, '') + (codec.clockRate ? '/' + codec.clockRate : '');
        }
      }
      return out;
    },
  };

  render();
  connect();
})();
